"""The GPU fast path's pieces, exercised on the CPU: token-budget rows, chunked linear cross-entropy,
the same loss and gradients as the standard path, and resume with a remembered budget.
(FlexAttention has no backward on the CPU, so there the fast path uses the same mask densely; the
BlockMask itself is checked in test_sequences.py.)"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from entrypoints import fast, platform, sequences, train
from launcher.spec import TrainConfig

FAST = {"fast_path": "on", "micro_batch_tokens": "256", "gradient_accumulation_steps": "2", "lora_dropout": "0.0"}


def recipe_for(root, **overrides) -> train.Recipe:
    plat = platform.detect(["--root", str(root)])
    return train.Recipe(plat, TrainConfig.from_mapping({**plat.hyperparameters, **overrides}))


def test_chunked_linear_cross_entropy_matches_the_full_logits():
    torch.manual_seed(0)
    hidden = torch.randn(300, 16, requires_grad=True)
    weight = torch.randn(50, 16)
    targets = torch.randint(0, 50, (300,))
    targets[::3] = sequences.IGNORE
    full = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, ignore_index=sequences.IGNORE, reduction="sum")
    (grad_full,) = torch.autograd.grad(full, hidden)
    chunked = fast.chunked_linear_cross_entropy(hidden, lambda h: h @ weight.T, targets, chunk=64)
    (grad_chunked,) = torch.autograd.grad(chunked, hidden)
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(grad_chunked, grad_full)


def test_choose_budget_is_the_largest_block_multiple_that_fits():
    # 1,000 bytes a token measured over 2,048 tokens; 3,000,000 bytes free -> 3,000 tokens -> 2,944 (23 x 128).
    budget, per_token = fast.choose_budget(lambda n: 1000 * n, probe_tokens=2048, max_seq_len=512, available_bytes=3_000_000)
    assert (budget, per_token) == (2944, 1000)
    # Never below one max_seq_len example (rounded up to a block), never above the cap.
    assert fast.choose_budget(lambda n: 10**6 * n, probe_tokens=256, max_seq_len=300, available_bytes=1)[0] == 384
    assert fast.choose_budget(lambda n: n, probe_tokens=256, max_seq_len=300, available_bytes=10**12, cap=4096)[0] == 4096


def _lora_pair(quantized: bool, dropout: float, bias: bool = True):
    """The same LoRA model twice: one on peft's own forward, one through fast.fuse_lora."""
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    first = torch.nn.Linear(64, 48, bias=bias or quantized)
    if quantized:
        import bitsandbytes as bnb

        q = bnb.nn.Linear4bit(64, 48, compute_dtype=torch.float32, quant_type="nf4")
        q.weight = bnb.nn.Params4bit(first.weight.data, requires_grad=False, quant_type="nf4")
        q.bias = torch.nn.Parameter(first.bias.data, requires_grad=False)
        first = q.to("cpu")
    model = get_peft_model(torch.nn.Sequential(first, torch.nn.ReLU(), torch.nn.Linear(48, 16, bias=bias)),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["0", "2"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero; a trained adapter is what matters
            torch.nn.init.normal_(p, std=0.1)
    fused = copy.deepcopy(model)
    assert fast.fuse_lora(fused) == 2
    return model, fused


@pytest.mark.parametrize("quantized,bias", [(False, False), (False, True), (True, True)], ids=["lora", "lora-bias", "qlora-nf4"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("input_grad", [True, False], ids=["input-grad", "no-input-grad"])
def test_fused_lora_layers_give_peft_outputs_and_gradients(quantized, bias, dropout, input_grad):
    peft_model, fused = _lora_pair(quantized, dropout, bias)
    results = []
    for model in (peft_model, fused):
        torch.manual_seed(1)  # the same dropout masks
        x = torch.randn(3, 5, 64, requires_grad=input_grad)  # a first layer's input needs no gradient
        y = model(x)
        y.square().sum().backward()
        results.append((y.detach(), [x.grad] * input_grad + [p.grad for p in model.parameters() if p.requires_grad]))
    (y_peft, g_peft), (y_fused, g_fused) = results
    torch.testing.assert_close(y_fused, y_peft)
    assert len(g_fused) == 4 + input_grad and all(g is not None and g.abs().sum() > 0 for g in g_fused)
    for a, b in zip(g_fused, g_peft):
        torch.testing.assert_close(a, b)


def test_fused_lora_layers_leave_disabled_and_merged_adapters_to_peft():
    peft_model, fused = _lora_pair(False, 0.0)
    x = torch.randn(4, 64)
    layers = fused.get_base_model()
    without = layers[2].base_layer(torch.relu(layers[0].base_layer(x)))
    expected = peft_model(x)
    assert not torch.allclose(without, expected)
    with fused.disable_adapter():
        torch.testing.assert_close(fused(x), without)
    fused.merge_adapter()
    torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)


def test_fp8_weight_scales_each_gemm_outside_its_contraction():
    torch.manual_seed(0)
    weight, x, dy = torch.randn(48, 64), torch.randn(3, 5, 64), torch.randn(3, 5, 48)
    weight[7] *= 100  # a loud output channel and a loud token: a scale on the wrong axis would show
    x[0, 0] *= 100
    fp8 = fast.Fp8Weight(weight)
    # cuBLASLt's float8 GEMM takes row-major operands only (A, and B stored as B.T): W.T is not a view.
    assert fp8.w.is_contiguous() and fp8.wt.is_contiguous() and fast.to_fp8_rows(x[0].T)[0].is_contiguous()

    def dequantised(t):
        q, scale = fast.to_fp8_rows(t.reshape(-1, t.shape[-1]))
        return q.float() * scale

    w = dequantised(weight)
    # Exactly the product of the dequantised operands: the scales sit on the right axes.
    torch.testing.assert_close(fp8.forward(x), (dequantised(x) @ w.T).view(3, 5, 48), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(fp8.input_grad(dy), (dequantised(dy) @ dequantised(weight.T).T).view(3, 5, 64), rtol=1e-5, atol=1e-4)
    # And, on ordinary values, close to the full-precision products (float8 e4m3 keeps 3 mantissa bits).
    weight, x = torch.randn(48, 64), torch.randn(3, 5, 64)
    fp8 = fast.Fp8Weight(weight)
    for got, want in ((fp8.forward(x), x @ weight.T), (fp8.input_grad(dy), dy @ weight)):
        assert (got - want).norm() / want.norm() < 0.08


def test_fused_lora_with_fp8_base_stays_close_to_the_bf16_path():
    peft_model, fused = _lora_pair(False, 0.0)
    fast.fuse_lora(peft_model, fp8=True)  # the same layers, now with float8 base matmuls
    results = []
    for model in (fused, peft_model):
        x = torch.randn(4, 9, 64, generator=torch.Generator().manual_seed(3), requires_grad=True)
        model(x).square().sum().backward()
        results.append([x.grad] + [p.grad for p in model.parameters() if p.requires_grad])
    errors = [float((fp8 - exact).norm() / exact.norm()) for exact, fp8 in zip(*results)]
    assert all(0 < e < 0.15 for e in errors), errors  # float8 really used, and only float8's rounding


def test_fp8_on_the_cpu_is_refused_with_one_line(make_job, capsys):
    root = make_job(hp={"fp8": "on"})
    code = train.main(["--root", str(root)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "fp8: on needs method lora on the fast path and a GPU with float8 matmuls" in err and "To fix: fp8: off" in err
    assert not (root / "model").exists()


def test_fit_layers_keeps_as_many_layers_as_fit_then_grows_the_budget():
    kib = 1024
    # 100 KiB a token with all 32 layers checkpointed, 50 KiB more per layer kept, 4 GiB free:
    # at 4,096 tokens 1 MiB a token fits, so (1024 - 100) // 50 = 18 layers are kept; then
    # 4 GiB / (100 + 18 x 50) KiB = 4,194 tokens -> 4,096 (a multiple of 128).
    assert fast.fit_layers(100 * kib, 50 * kib, 32, 4 * 2**30, max_seq_len=2048, cap=32768) == (4096, 18)
    # Room for every layer: all kept, and the budget grows up to the cap.
    assert fast.fit_layers(100 * kib, 1 * kib, 32, 40 * 2**30, max_seq_len=2048, cap=16384) == (16384, 32)
    # Not even the floor with every layer checkpointed: none kept, the budget is what fits, but never
    # below one max_seq_len example.
    assert fast.fit_layers(100 * kib, 50 * kib, 32, 200 * 2**20, max_seq_len=1024, cap=32768) == (2048, 0)
    assert fast.fit_layers(100 * kib, 50 * kib, 32, 2**20, max_seq_len=1000, cap=32768) == (1024, 0)


@pytest.mark.slow
def test_per_layer_checkpointing_changes_memory_not_gradients(make_job):
    """Each checkpointed layer is recomputed in backward (its activations are not kept), the others
    are not; the gradients are the same whatever is checkpointed."""
    from test_recipe import count_checkpoint_calls

    recipe = recipe_for(make_job(hp=FAST))
    recipe.setup()
    layers = recipe.decoder_layers()
    assert len(layers) == 4 and recipe.checkpointed_layers() == 0
    recipe.checkpoint_layers(4)  # gives every layer its checkpoint function
    calls = count_checkpoint_calls(recipe)
    batch = sequences.collate(recipe.rows[:2], recipe.train_tokens, recipe.tokenizer.pad_token_id, multiple=128)
    grads, kept = [], []
    for count in (0, 2, 4):
        recipe.checkpoint_layers(count)
        assert [layer.gradient_checkpointing for layer in layers] == [i >= 4 - count for i in range(4)]
        recipe.model.zero_grad()
        calls.clear()
        saved = []  # bytes autograd keeps for backward (checkpointed layers keep only their inputs)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
            loss_sum, _ = recipe.forward(recipe.model, batch)
        loss_sum.backward()
        assert dict(calls) == {i: 1 for i in range(4 - count, 4)}  # each checkpointed layer ran under checkpoint
        kept.append(sum(saved))
        grads.append([p.grad.clone() for p in recipe.model.parameters() if p.requires_grad])
    assert kept[0] > kept[1] > kept[2]
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_compiled_layers_give_the_same_loss_and_gradients(make_job):
    results = []
    for compiled in ("off", "layers"):
        recipe = recipe_for(make_job(hp=FAST, name=f"compile-{compiled}"), torch_compile=compiled)
        recipe.setup()
        batch = sequences.collate(recipe.rows[:1], recipe.train_tokens, recipe.tokenizer.pad_token_id, width=256)
        for p in recipe.model.parameters():  # LoRA B starts at zero; move it so every path carries gradient
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(p.numel()))
        loss_sum, _ = recipe.forward(recipe.model, batch)
        loss_sum.backward()
        results.append((loss_sum.detach(), [p.grad for p in recipe.model.parameters() if p.requires_grad]))
        if compiled == "layers":
            assert all(layer._compiled_call_impl is not None for layer in recipe.decoder_layers())
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-4)
    for a, b in zip(compiled_grads, eager_grads):  # fused kernels sum in another order: float32 rounding apart
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_fast_path_trains_and_resumes_with_the_remembered_budget(make_job):
    def run(root, on_step=None):
        plat = platform.detect(["--root", str(root)])
        return train.run(plat, TrainConfig.from_mapping(plat.hyperparameters), on_step=on_step, install_signals=on_step is not None)

    hp = {**FAST, "epochs": "2", "checkpoint_every": "2", "eval_samples": "2", "max_new_tokens": "8"}
    reference = make_job(hp=hp, name="reference")
    metrics = run(reference)
    assert metrics["fast_path"]["micro_batch_tokens"] == 256 and metrics["fast_path"]["attention"] == "sdpa"
    assert metrics["loss_curve"][-1]["loss"] < metrics["loss_curve"][0]["loss"]

    # Interrupted, and resumed with micro_batch_tokens removed: the budget comes from the checkpoint.
    root = make_job(hp=hp, name="interrupted")
    with pytest.raises(train.Interrupted):
        run(root, on_step=lambda step: step == 3 and os.kill(os.getpid(), signal.SIGTERM))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    position = json.loads(max((root / "checkpoints").glob("step-*/position.json")).read_text())
    assert position["micro_batch_tokens"] == 256 and position["checkpointed_layers"] == 0
    config = root / "input/config/hyperparameters.json"
    config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "micro_batch_tokens"}))
    run(root)
    expected = load_file(str(reference / "model/adapter_model.safetensors"))
    resumed = load_file(str(root / "model/adapter_model.safetensors"))
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], atol=1e-5, rtol=0)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_sibling_adapters_computed_together_give_peft_outputs_and_gradients(monkeypatch, checkpointing):
    """q/k/v and gate/up (fed the same tensor) go through one autograd function each, with the same
    outputs and gradients as peft's layer-by-layer code; recomputation under checkpointing too."""
    import copy

    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    fused = copy.deepcopy(model)
    assert fast.fuse_lora(fused) == 2 * 7
    calls = []
    apply = fast._LoraGroup.apply
    monkeypatch.setattr(fast._LoraGroup, "apply", lambda x, layers, *w: calls.append(len(layers)) or apply(x, layers, *w))
    if checkpointing:
        from entrypoints import models

        models.enable_checkpointing(fused)  # as the recipe does: the first layer's input needs no gradient
    ids = torch.randint(0, 96, (2, 12))
    results = []
    for m in (model, fused):
        m.train()
        logits = m(input_ids=ids).logits
        logits.square().mean().backward()
        results.append((logits.detach(), {n: p.grad for n, p in m.named_parameters() if p.requires_grad}))
    (y_peft, g_peft), (y_fused, g_fused) = results
    per_forward = [3, 1, 2, 1] * 2  # q/k/v, o, gate/up, down in each of 2 layers
    assert calls == per_forward * (2 if checkpointing else 1)
    torch.testing.assert_close(y_fused, y_peft)
    assert g_fused.keys() == g_peft.keys() and all(g_fused[n] is not None and g_fused[n].abs().sum() > 0 for n in g_fused)
    for name in g_peft:
        torch.testing.assert_close(g_fused[name], g_peft[name], msg=name)


def test_micro_batches_are_sized_from_probed_memory_and_layers_checkpointed_to_fit():
    """``fast.size_micro_batches`` with a probe that charges each token 100 KiB with every layer
    checkpointed and more per layer kept (20 KiB for the first, whose input needs no gradient, 50 for
    the others), on a GPU of a given size."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from launcher import memory

    kib = 1024
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))

    def probe(tokens):
        kept = [i for i, layer in enumerate(fast.decoder_layers(model)) if not layer.gradient_checkpointing]
        return tokens * (100 * kib + sum(20 * kib if i == 0 else 50 * kib for i in kept))

    def size(gib, **changes):
        lines = []
        cfg = TrainConfig(fast_path="on", micro_batch_size=8, gradient_accumulation_steps=4, max_seq_len=1024).model_copy(update=changes)
        sizing = fast.size_micro_batches(model, probe, cfg, log=lines.append, total_memory=gib * 2**30, allocated=lambda: 0)
        assert sizing.checkpointed_layers == fast.checkpointed_layers(model)
        return (sizing.micro_batch_tokens, sizing.bytes_per_token, sizing.checkpointed_layers), lines

    # A large GPU: no checkpointing, the budget capped at one optimizer step (8 x 4 x 1,024 tokens).
    assert size(80) == ((32768, 270 * kib, 0), ["micro-batch budget: 32768 tokens (270 KiB per token measured)"])
    # One 8,192-token example needs 2.1 GiB without checkpointing; 1.6 GiB are free: every layer checkpointed.
    long = {"max_seq_len": 8192, "micro_batch_size": 1, "gradient_accumulation_steps": 1}
    assert size(4, **long) == ((8192, 100 * kib, 4), ["one max_seq_len example does not fit without gradient checkpointing: turning it on",
                                                      "micro-batch budget: 8192 tokens (100 KiB per token measured)"])
    # "on" and "off" are kept, whatever they cost: nothing more to turn on, nothing turned on.
    assert size(1, **long, gradient_checkpointing="on") == ((8192, 100 * kib, 4), ["micro-batch budget: 8192 tokens (100 KiB per token measured)"])
    fast.checkpoint_layers(model, 0)
    assert size(4, **long, gradient_checkpointing="off")[0] == (8192, 270 * kib, 0)
    # max_memory_gib 1: at 4,096 tokens a token may take 243 KiB, so 2 layers are kept (100 + 2 x 50 KiB),
    # and 0.95 GiB / 200 KiB = 4,980 tokens -> 4,864, a multiple of 128.
    assert size(80, max_memory_gib=1.0) == ((4864, 200 * kib, 2), [
        "memory target 1.0 GiB: 4864 tokens a micro-batch, 2 of 4 layers checkpointed (100 KiB per token checkpointed, "
        "50 KiB more per layer kept, 20 KiB for the first)"])
    assert [layer.gradient_checkpointing for layer in fast.decoder_layers(model)] == [False, False, True, True]
    # QLoRA: within what the standard path would take (launcher.memory's figure for this shape), here one example.
    (budget, _, checkpointed), lines = size(80, method="qlora")
    shape = memory.ModelShape.from_config(config.to_dict(), name="tiny", source="config")
    target = memory.qlora_memory_target(shape, TrainConfig(method="qlora", micro_batch_size=8, max_seq_len=1024))
    assert (budget, checkpointed) == (1024, 4) and lines[0].startswith(f"QLoRA memory target {target / 2**30:.1f} GiB: what 8 padded rows")
