"""GPU kernels the CPU suite cannot run: skipped without CUDA, run on a GPU machine with
``python -m pytest tests/test_gpu.py`` (see the README's speed section)."""

from __future__ import annotations

import pytest
import torch

from entrypoints import fast, sequences

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

LENGTHS = [37, 200, 5, 130, 64]  # uneven examples, one shorter than a FlashAttention tile


def _small_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to("cuda", torch.bfloat16)


def _run(model, ids, positions, offsets, longest):
    """Logits and layer 0's q_proj gradient of a loss over them."""
    offsets = offsets.cuda()
    logits = model(input_ids=ids, position_ids=positions, cu_seq_lens_q=offsets, cu_seq_lens_k=offsets,
                   max_length_q=longest, max_length_k=longest).logits[0].float()
    logits.pow(2).mean().backward()
    weight = model.model.layers[0].self_attn.q_proj.weight
    grad, weight.grad = weight.grad.float(), None
    return logits.detach(), grad


@pytest.mark.skipif(not fast.varlen_available(), reason="needs PyTorch's FlashAttention varlen kernel")
def test_flash_varlen_isolates_packed_examples_forward_and_backward():
    """LENGTHS random examples packed in one row through the FlashAttention varlen kernel give the
    logits and gradients of the examples run one by one (SDPA); the same row as one sequence (every
    token seeing earlier examples) does not, so the comparison can tell a leak from bf16 rounding."""
    model = _small_llama()
    examples = [torch.randint(0, 512, (n,)) for n in LENGTHS]
    ids = torch.cat(examples)[None].cuda()
    positions = torch.cat([torch.arange(n) for n in LENGTHS])[None].cuda()
    offsets, longest = sequences.cu_seqlens(torch.cat([torch.full((n,), d) for d, n in enumerate(LENGTHS)])[None])

    model.set_attn_implementation("sdpa")
    alone_logits = torch.cat([model(input_ids=e[None].cuda()).logits[0].float() for e in examples])
    alone_logits.pow(2).mean().backward()
    weight = model.model.layers[0].self_attn.q_proj.weight
    alone_grad, weight.grad = weight.grad.float(), None

    model.set_attn_implementation(fast.register_varlen())
    logits, grad = _run(model, ids, positions, offsets, longest)
    leaky_logits, leaky_grad = _run(model, ids, positions, torch.tensor([0, ids.shape[1]], dtype=torch.int32), ids.shape[1])

    error, leak = (logits - alone_logits).abs().max(), (leaky_logits - alone_logits).abs().max()
    grad_error, grad_leak = (grad - alone_grad).norm() / alone_grad.norm(), (leaky_grad - alone_grad).norm() / alone_grad.norm()
    assert error < 0.1 * leak, (error, leak)
    assert grad_error < 0.1 * grad_leak, (grad_error, grad_leak)
    assert grad_error < 0.02


@pytest.mark.skipif(not fast.varlen_available(), reason="needs PyTorch's FlashAttention varlen kernel")
def test_flash_varlen_applies_the_sliding_window():
    """A Mistral-shaped model with a 32-token window: packed through the kernel (window_size from each
    layer's sliding_window), the logits equal each example alone under transformers' own sliding mask,
    and differ clearly from full causal attention."""
    import copy

    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
                           num_key_value_heads=2, max_position_embeddings=1024, sliding_window=32)
    torch.manual_seed(0)
    model = MistralForCausalLM(config).to("cuda", torch.bfloat16)
    full = MistralForCausalLM(copy.deepcopy(config)).to("cuda", torch.bfloat16)
    full.load_state_dict(model.state_dict())
    full.config.sliding_window = None
    examples = [torch.randint(0, 512, (n,)) for n in LENGTHS]
    ids = torch.cat(examples)[None].cuda()
    positions = torch.cat([torch.arange(n) for n in LENGTHS])[None].cuda()
    offsets, longest = sequences.cu_seqlens(torch.cat([torch.full((n,), d) for d, n in enumerate(LENGTHS)])[None])
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        alone = torch.cat([model(input_ids=e[None].cuda()).logits[0].float() for e in examples])
        full.set_attn_implementation("sdpa")
        unwindowed = torch.cat([full(input_ids=e[None].cuda()).logits[0].float() for e in examples])
        model.set_attn_implementation(fast.register_varlen())
        offsets = offsets.cuda()
        packed = model(input_ids=ids, position_ids=positions, cu_seq_lens_q=offsets, cu_seq_lens_k=offsets,
                       max_length_q=longest, max_length_k=longest).logits[0].float()
    error, window_effect = (packed - alone).abs().max(), (unwindowed - alone).abs().max()
    assert error < 0.1 * window_effect, (error, window_effect)
