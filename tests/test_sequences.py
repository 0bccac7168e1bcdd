"""Chat-template tokenisation, target masks, truncation and packing isolation."""

from __future__ import annotations

import pytest
import torch

from entrypoints import sequences
from launcher.data import Example


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    from entrypoints import models

    return models.load_tokenizer(str(tiny_llama_dir))


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), attn_implementation="sdpa").eval()


def chat(*turns: tuple[str, str]) -> Example:
    return Example(tuple(turns), "mem", 1, "messages")


def target_text(tokenizer, tok: sequences.Tokenized) -> list[str]:
    """The target tokens, grouped into contiguous spans and decoded."""
    spans, current = [], []
    for target in tok.targets:
        if target == sequences.IGNORE:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(target)
    if current:
        spans.append(current)
    return [tokenizer.decode(span) for span in spans]


def test_only_assistant_tokens_are_targets_and_each_ends_with_eos(tokenizer):
    example = chat(("system", "Be brief."), ("user", "Hi there"), ("assistant", "Hello client."),
                   ("user", "Balance?"), ("assistant", "It is $5,000."))
    tok = sequences.tokenize(tokenizer, example, max_seq_len=512)
    assert target_text(tokenizer, tok) == ["Hello client.</s>\n", "It is $5,000.</s>\n"]
    # Prompt text never appears among targets; the full sequence is the rendered template.
    assert tokenizer.decode(tok.input_ids) == sequences.render(tokenizer, example.messages)
    assert not tok.truncated


def test_eos_is_added_when_the_template_has_none(tokenizer):
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    tok = sequences.tokenize(tokenizer, chat(("user", "Q"), ("assistant", "A")), max_seq_len=64)
    assert target_text(tokenizer, tok) == ["A\n</s>"]


def test_truncation_keeps_the_start_and_counts_lost_targets(tokenizer):
    example = chat(("user", "word " * 40), ("assistant", "the answer " * 10))
    full = sequences.tokenize(tokenizer, example, max_seq_len=4096)
    prompt_len = len(sequences.prompt_ids(tokenizer, example))
    partial = sequences.tokenize(tokenizer, example, max_seq_len=prompt_len + 3)
    gone = sequences.tokenize(tokenizer, example, max_seq_len=prompt_len)
    assert partial.truncated and 0 < partial.n_targets < full.n_targets
    assert partial.input_ids == full.input_ids[: prompt_len + 3]
    assert gone.truncated and gone.n_targets == 0


def test_first_fit_decreasing_packing_respects_capacity():
    lengths = [60, 10, 30, 45, 5, 20, 70, 15]
    rows = sequences.pack(lengths, capacity=80)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 80 for row in rows)
    assert len(rows) == 4  # 255 tokens need at least 4 rows of 80
    assert rows == sequences.pack(lengths, capacity=80)  # deterministic


def _packed_logits(model, tokenizer, examples, mask_kind):
    toks = [sequences.tokenize(tokenizer, e, 256) for e in examples]
    batch = sequences.collate([list(range(len(toks)))], toks, tokenizer.pad_token_id, multiple=128)
    if mask_kind == "varlen":  # no mask: the examples' offsets
        offsets, longest = sequences.cu_seqlens(batch["doc_ids"])
        offsets = offsets.to(model.device)
        extra = {"cu_seq_lens_q": offsets, "cu_seq_lens_k": offsets, "max_length_q": longest, "max_length_k": longest}
    else:
        mask = {"dense": sequences.dense_mask, "block": sequences.block_mask, "none": lambda d: None}[mask_kind](batch["doc_ids"])
        extra = {"attention_mask": mask}
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"].to(model.device), position_ids=batch["position_ids"].to(model.device), **extra).logits[0]
    out, start = [], 0
    for tok in toks:
        out.append(logits[start : start + len(tok)])
        start += len(tok)
    return toks, out


EXAMPLES = [
    chat(("user", "Client Bob, age 40."), ("assistant", "Client: Bob. Age: 40.")),
    chat(("system", "House style."), ("user", "Client Eve, cash $9,000, risk moderate."), ("assistant", "Eve holds $9,000.")),
    chat(("user", "Hi"), ("assistant", "Hello."), ("user", "Bye"), ("assistant", "Goodbye.")),
]


def _assert_isolated(model, tokenizer, mask_kind: str, atol: float, alone_model=None) -> None:
    """Each packed example's logits equal its logits alone (from ``alone_model``, default the same)."""
    toks, packed = _packed_logits(model, tokenizer, EXAMPLES, mask_kind)
    alone_model = alone_model or model
    for tok, logits in zip(toks, packed):
        with torch.no_grad():
            alone = alone_model(input_ids=torch.tensor([tok.input_ids], device=alone_model.device)).logits[0]
        assert torch.allclose(logits.float(), alone.float(), atol=atol), (logits.float() - alone.float()).abs().max()


def test_packed_examples_give_the_same_logits_as_alone(model, tokenizer):
    _assert_isolated(model, tokenizer, "dense", atol=1e-5)


def test_cu_seqlens_marks_each_example_padding_and_row_start():
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, -1, -1, -1], [0, 0, 0, 0, 0, 0, 1, 1]])
    offsets, longest = sequences.cu_seqlens(doc_ids)
    assert offsets.dtype == torch.int32
    assert offsets.tolist() == [0, 3, 5, 8, 14, 16]  # row 1: 3 + 2 + padding 3; row 2: 6 + 2
    assert longest == 6


def test_varlen_attention_isolates_examples(tiny_llama_dir, tokenizer):
    """The varlen attention function, wired through transformers (registered implementation, offsets as
    keyword arguments, no mask): packed logits match each example alone. On the CPU it runs its
    per-example SDPA reference; tests/test_gpu.py runs the FlashAttention kernel the same way."""
    from transformers import AutoModelForCausalLM

    from entrypoints import fast

    varlen = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), attn_implementation=fast.register_varlen()).eval()
    alone = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), attn_implementation="sdpa").eval()
    _assert_isolated(varlen, tokenizer, "varlen", atol=1e-5, alone_model=alone)
    with pytest.raises(ValueError, match="needs cu_seq_lens_q"):
        varlen(input_ids=torch.tensor([[1, 2, 3]]))


def test_flex_attention_block_mask_isolates_examples_too(tiny_llama_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    flex = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), attn_implementation="flex_attention").eval()
    _assert_isolated(flex, tokenizer, "block", atol=1e-4)


def test_position_ids_alone_leak_across_examples(model, tokenizer):
    """Why the mask exists: with reset position ids but no per-example mask, later examples differ."""
    toks, packed = _packed_logits(model, tokenizer, EXAMPLES, "none")
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([toks[1].input_ids])).logits[0]
    assert (packed[1] - alone).abs().max() > 1e-3


def test_block_mask_from_document_ids_equals_the_mask_function(tokenizer):
    """The fast path builds its BlockMask from document boundaries; it must equal FlexAttention's own
    create_block_mask over the document-causal mask function, padding included."""
    from torch.nn.attention.flex_attention import create_block_mask

    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        length = 128 * int(torch.randint(1, 7, (1,), generator=generator))
        doc_ids = torch.full((2, length), -1)
        for row in range(2):
            end = length - int(torch.randint(0, length // 2, (1,), generator=generator))
            start, doc = 0, 0
            while start < end:
                size = min(end - start, int(torch.randint(1, 300, (1,), generator=generator)))
                doc_ids[row, start : start + size] = doc
                start, doc = start + size, doc + 1
        docs = torch.where(doc_ids < 0, doc_ids.max() + 1, doc_ids)
        reference = create_block_mask(lambda b, h, q, k: (docs[b, q] == docs[b, k]) & (q >= k), 2, None, length, length, device="cpu")
        assert torch.equal(sequences.block_mask(doc_ids).to_dense(), reference.to_dense())
