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
    # The newline the template writes after the end of the turn belongs to the next prompt.
    assert target_text(tokenizer, tok) == ["Hello client.</s>", "It is $5,000.</s>"]
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

# --- chat templates whose turn end is not EOS ----------------------------------------------------------
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
# Llama-2 / Mistral: the system prompt folded into the first user turn, BOS before each [INST], EOS after each answer.
INST = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}{% set messages = messages[1:] %}"
    "{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% if loop.first and system %}{% set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{{ bos_token + '[INST] ' + content | trim + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}"
)
TEMPLATES = {"chatml": (CHATML, "<|im_end|>"), "llama3": (LLAMA3, "<|eot_id|>"), "inst": (INST, "</s>")}


def templated_tokenizer(template: str, adds_bos: bool = False):
    """tiny-llama's BPE with another family's special tokens and chat template (built offline)."""
    from tokenizers import processors

    from entrypoints import tiny_llama

    tok = tiny_llama.build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|start_header_id|>",
                                                          "<|end_header_id|>", "<|eot_id|>", "[INST]", "[/INST]"]})
    tok.chat_template = template
    if adds_bos:  # a tokenizer that puts BOS in front by itself, as Llama-2's and Mistral's do
        tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    return tok


CONVERSATION = chat(("system", "Be brief."), ("user", "Claim for Ann Lee?"), ("assistant", "Ann Lee: knee, 30 days."),
                    ("user", "And the amount?"), ("assistant", "It is $5,000."))


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_each_assistant_target_ends_with_the_templates_own_end_of_turn(family):
    template, end = TEMPLATES[family]
    tokenizer = templated_tokenizer(template)
    assert sequences.chat_format(tokenizer).end_of_turn == end
    tok = sequences.tokenize(tokenizer, CONVERSATION, max_seq_len=1024)
    spans = target_text(tokenizer, tok)
    assert [s.strip().replace(f" {end}", end) for s in spans] == [f"Ann Lee: knee, 30 days.{end}", f"It is $5,000.{end}"]
    if end != tokenizer.eos_token:  # no EOS after the turn's own end token (training would see what inference never makes)
        assert tokenizer.eos_token not in tokenizer.decode(tok.input_ids)
    assert tokenizer.convert_tokens_to_ids(end) in sequences.chat_format(tokenizer).stop_token_ids(tokenizer)


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_every_training_prefix_is_the_serving_prompt(family):
    """The tokens before each assistant turn are exactly what evaluation and serving feed the model
    (the conversation so far rendered with add_generation_prompt=True)."""
    tokenizer = templated_tokenizer(TEMPLATES[family][0])
    tok = sequences.tokenize(tokenizer, CONVERSATION, max_seq_len=1024)
    starts = [i + 1 for i in range(len(tok.targets)) if tok.targets[i] != sequences.IGNORE and (i == 0 or tok.targets[i - 1] == sequences.IGNORE)]
    assert len(starts) == 2
    for start, upto in zip(starts, (3, 5)):
        served = sequences.prompt_ids(tokenizer, chat(*CONVERSATION.messages[:upto]))
        assert tok.input_ids[:start] == served


@pytest.mark.parametrize("family,adds_bos", [("chatml", False), ("llama3", False), ("inst", False), ("inst", True)])
def test_bos_is_present_exactly_once_wherever_the_model_expects_one(family, adds_bos):
    tokenizer = templated_tokenizer(TEMPLATES[family][0], adds_bos=adds_bos)
    tok = sequences.tokenize(tokenizer, CONVERSATION, max_seq_len=1024)
    prompt = sequences.prompt_ids(tokenizer, chat(*CONVERSATION.messages[:3]))
    bos = tokenizer.bos_token_id
    expected = family != "chatml"  # ChatML models (Qwen, SmolLM2) use none
    assert (tok.input_ids[0] == bos) is expected and (prompt[0] == bos) is expected
    assert tok.input_ids[1] != bos and prompt[1] != bos


def test_the_fallback_template_gets_bos_from_a_tokenizer_that_adds_one():
    from entrypoints import models

    tokenizer = templated_tokenizer(models.DEFAULT_CHAT_TEMPLATE, adds_bos=True)
    tok = sequences.tokenize(tokenizer, chat(("user", "Q"), ("assistant", "A")), max_seq_len=64)
    assert tok.input_ids[0] == tokenizer.bos_token_id and tok.targets[0] == sequences.IGNORE
    assert target_text(tokenizer, tok) == ["A</s>"]


def test_varlen_attention_applies_each_layers_sliding_window(tokenizer):
    """A sliding-window model (Mistral-shaped, window shorter than the examples): packed through the
    varlen function, each example's logits equal the model's own sliding-window attention alone."""
    import copy

    from transformers import MistralConfig, MistralForCausalLM

    from entrypoints import fast

    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, sliding_window=8)
    torch.manual_seed(0)
    alone = MistralForCausalLM(config).eval()
    alone.set_attn_implementation("sdpa")
    varlen = MistralForCausalLM(copy.deepcopy(config)).eval()  # its own config: the implementation is set there
    varlen.load_state_dict(alone.state_dict())
    varlen.set_attn_implementation(fast.register_varlen())
    assert min(len(sequences.tokenize(tokenizer, e, 256)) for e in EXAMPLES) > 2 * config.sliding_window
    _assert_isolated(varlen, tokenizer, "varlen", atol=1e-5, alone_model=alone)
    # The window matters here: full causal attention would give other logits.
    full = MistralForCausalLM(MistralConfig(**{**config.to_dict(), "sliding_window": None})).eval()
    full.load_state_dict(alone.state_dict())
    full.set_attn_implementation("sdpa")
    with pytest.raises(AssertionError):
        _assert_isolated(full, tokenizer, "dense", atol=1e-5, alone_model=alone)
