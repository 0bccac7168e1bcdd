"""From examples to training rows: chat-template tokenisation, target masks, packing, batches, masks.

Tokenisation renders each conversation with the base model's chat template piece by piece: the text
before each assistant turn (with the generation prompt) and the assistant turn itself are tokenised
separately, so the tokens before every assistant turn are exactly the prompt built with
``add_generation_prompt=True`` at evaluation and serving time (``prompt_ids``; a test checks it for
ChatML, Llama-3 and ``[INST]`` templates). Only assistant tokens are targets, and each target ends
with the template's own end-of-turn token (ChatML's ``<|im_end|>``, Llama-3's ``<|eot_id|>``,
``[INST]`` templates' ``</s>``); what a template writes after it (ChatML's newline) belongs to the next
prompt and is no target. Only a template that closes assistant turns with no special token gets an
EOS added, or generation would never stop. A BOS starts every sequence when the model expects one
(its tokenizer adds one itself, or its template writes one). Targets are stored already shifted
(``targets[i]`` is the token to predict at position ``i``), so examples can be concatenated without a
target ever crossing from one example into the next.

Packing puts several short examples in one row of ``max_seq_len`` tokens. Position ids restart at 0
for each example and every row carries per-token document ids, from which the attention mask is built:
a token attends only to earlier tokens of its own example (a block-diagonal causal mask). Position ids
alone do NOT isolate examples in transformers 5.x (NOTES.md); the mask does, and a test proves it.
Unpacked rows are the same thing with one example per row, so there is one code path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from launcher.data import Example

IGNORE = -100


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[int]
    targets: list[int]  # shifted labels: the token to predict at each position, IGNORE elsewhere
    truncated: bool = False

    @property
    def n_targets(self) -> int:
        return sum(1 for t in self.targets if t != IGNORE)

    def __len__(self) -> int:
        return len(self.input_ids)


def _messages(turns) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in turns]


def render(tokenizer, turns, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(_messages(turns), tokenize=False, add_generation_prompt=add_generation_prompt)


@dataclass(frozen=True)
class ChatFormat:
    """How a tokenizer's chat template frames an assistant turn."""

    end_of_turn: str | None  # the special token closing an assistant turn; None: the template writes none
    bos: bool  # whether every sequence starts with BOS (the tokenizer adds one itself, or the template does)

    def stop_token_ids(self, tokenizer) -> list[int]:
        """Where generation stops: the end-of-turn token and EOS."""
        ids = [tokenizer.convert_tokens_to_ids(self.end_of_turn)] if self.end_of_turn else []
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
            ids.append(tokenizer.eos_token_id)
        return ids


_PROBE = "Launcher probe answer 7"


def chat_format(tokenizer) -> ChatFormat:
    """The template's end-of-turn token and BOS rule, found by rendering a probe conversation (cached
    on the tokenizer)."""
    cached = getattr(tokenizer, "_launcher_chat_format", None)
    if cached is not None and cached[0] == tokenizer.chat_template:
        return cached[1]
    rendered = render(tokenizer, (("user", "Hi"), ("assistant", _PROBE)))
    after = rendered[rendered.rindex(_PROBE) + len(_PROBE):]
    specials = {t for t in tokenizer.all_special_tokens if t}
    specials |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    found = [(after.find(t), -len(t), t) for t in specials if t in after]
    end_of_turn = min(found)[2] if found else None
    bos_id = tokenizer.bos_token_id
    adds_bos = bos_id is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos_id]
    fmt = ChatFormat(end_of_turn, adds_bos or bool(tokenizer.bos_token and rendered.startswith(tokenizer.bos_token)))
    try:
        tokenizer._launcher_chat_format = (tokenizer.chat_template, fmt)
    except AttributeError:
        pass
    return fmt


def segments(tokenizer, example: Example) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_target) pieces."""
    fmt = chat_format(tokenizer)
    if example.text is not None:  # general text (forgetting mix): every token is a target
        return [(example.text + (tokenizer.eos_token or ""), True)]
    pieces: list[tuple[str, bool]] = []
    done = ""
    for index, (role, _) in enumerate(example.messages):
        if role != "assistant":
            continue
        prefix = render(tokenizer, example.messages[:index], add_generation_prompt=True)
        upto = render(tokenizer, example.messages[: index + 1])
        if not (prefix.startswith(done) and upto.startswith(prefix)):
            raise ValueError(
                "the chat template does not render conversations incrementally; cannot locate assistant turns"
            )
        answer, after = upto[len(prefix):], ""
        end = answer.rfind(fmt.end_of_turn) if fmt.end_of_turn else -1
        if end >= 0:  # the turn's own end token closes the target; what follows belongs to the next prompt
            answer, after = answer[: end + len(fmt.end_of_turn)], answer[end + len(fmt.end_of_turn):]
        elif tokenizer.eos_token:  # a template without an end-of-turn token: EOS, or generation runs on
            answer += tokenizer.eos_token
        pieces += [(prefix[len(done):], False), (answer, True), (after, False)]
        done = upto
    return [(text, target) for text, target in pieces if text]


def _with_bos(tokenizer, ids: list[int]) -> list[int]:
    bos = tokenizer.bos_token_id
    if chat_format(tokenizer).bos and bos is not None and ids[:1] != [bos]:
        return [bos, *ids]
    return ids


def tokenize(tokenizer, example: Example, max_seq_len: int) -> Tokenized:
    """Token ids and shifted targets for one example, truncated on the right to ``max_seq_len``."""
    ids: list[int] = []
    is_target: list[bool] = []
    for text, target in segments(tokenizer, example):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        is_target += [target] * len(piece)
    with_bos = _with_bos(tokenizer, ids)
    if len(with_bos) > len(ids):
        ids, is_target = with_bos, [False, *is_target]
    truncated = len(ids) > max_seq_len
    ids, is_target = ids[:max_seq_len], is_target[:max_seq_len]
    # Shift: position i predicts token i+1 when token i+1 is a target.
    targets = [ids[i + 1] if is_target[i + 1] else IGNORE for i in range(len(ids) - 1)] + [IGNORE]
    return Tokenized(ids, targets, truncated)


def prompt_ids(tokenizer, example: Example) -> list[int]:
    """The token ids a model sees before it generates the last assistant turn (as at serving time)."""
    text = render(tokenizer, example.prompt, add_generation_prompt=True)
    return _with_bos(tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"])


# --- rows -------------------------------------------------------------------------------------------
def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing bin packing of example indices into rows of at most ``capacity`` tokens.
    Deterministic (ties broken by index)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    space: list[int] = []
    for index in order:
        for row, free in enumerate(space):
            if lengths[index] <= free:
                rows[row].append(index)
                space[row] -= lengths[index]
                break
        else:
            rows.append([index])
            space.append(capacity - lengths[index])
    return rows


def make_rows(examples: Sequence[Tokenized], capacity: int, packing: bool) -> list[list[int]]:
    if packing:
        return pack([len(e) for e in examples], capacity)
    return [[i] for i in range(len(examples))]


def collate(rows: Sequence[Sequence[int]], examples: Sequence[Tokenized], pad_id: int, multiple: int = 8, width: int | None = None):
    """A batch of rows as tensors: input_ids, targets, position_ids, doc_ids (-1 on padding).
    Rows are padded to ``width`` when given (static shapes), else to the longest row."""
    import torch

    lengths = [sum(len(examples[i]) for i in row) for row in rows]
    width = width or -(-max(lengths) // multiple) * multiple
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    targets = torch.full(shape, IGNORE, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    doc_ids = torch.full(shape, -1, dtype=torch.long)
    for b, row in enumerate(rows):
        start = 0
        for doc, index in enumerate(row):
            example = examples[index]
            end = start + len(example)
            input_ids[b, start:end] = torch.tensor(example.input_ids)
            targets[b, start:end] = torch.tensor(example.targets)
            position_ids[b, start:end] = torch.arange(len(example))
            doc_ids[b, start:end] = doc
            start = end
        position_ids[b, start:] = torch.arange(width - start)
    return {"input_ids": input_ids, "targets": targets, "position_ids": position_ids, "doc_ids": doc_ids}


def dense_mask(doc_ids):
    """Block-diagonal causal mask [B, 1, L, L] (True = may attend) for SDPA/eager attention.
    Padding (doc -1) forms its own block, so no query row is fully masked (which would give NaN)."""
    import torch

    length = doc_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=doc_ids.device).tril()
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    return (same & causal)[:, None]


def cu_seqlens(doc_ids):
    """Where each sequence starts in the flattened batch, for varlen attention: (int32 tensor of
    sequences + 1 offsets ending at the token count, the longest sequence's length). A sequence is one
    example; a row's padding (doc -1) is one more, and every row starts a new one."""
    import torch

    length = doc_ids.shape[1]
    flat = doc_ids.reshape(-1)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1]
    starts[::length] = True
    offsets = torch.cat([starts.nonzero().flatten(), torch.tensor([flat.numel()])]).to(torch.int32)
    return offsets, int((offsets[1:] - offsets[:-1]).max())


def block_mask(doc_ids, block: int = 128):
    """The same mask as a FlexAttention BlockMask: O(L) memory, fully masked blocks skipped.

    Built straight from the document ids rather than by evaluating the mask function on every
    (query, key) pair (``create_block_mask`` materialises an L x L tensor: 2 GB at 44k tokens).
    Documents are contiguous runs in a row, so a (query block, key block) pair at or below the diagonal
    holds an allowed pair exactly when their document-id ranges overlap, and is fully allowed when both
    lie inside one document strictly below the diagonal. Padding counts as one more document."""
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    batch, length = doc_ids.shape
    if length % block:
        raise ValueError(f"row length {length} is not a multiple of the attention block size {block}")
    docs = torch.where(doc_ids < 0, doc_ids.max() + 1, doc_ids)  # padding sorts after the last document
    blocks = docs.view(batch, length // block, block)
    low, high = blocks.amin(-1), blocks.amax(-1)  # non-decreasing ids: each block spans [low, high]
    n = length // block
    below = torch.ones(n, n, dtype=torch.bool, device=docs.device).tril()
    strictly_below = torch.ones(n, n, dtype=torch.bool, device=docs.device).tril(-1)
    overlap = (low[:, :, None] <= high[:, None, :]) & (high[:, :, None] >= low[:, None, :]) & below
    single = low == high
    full = single[:, :, None] & single[:, None, :] & (low[:, :, None] == low[:, None, :]) & strictly_below
    partial = overlap & ~full

    def indices(dense):
        counts = dense.sum(-1, dtype=torch.int32)[:, None]
        order = torch.argsort((~dense).to(torch.int8), dim=-1, stable=True).to(torch.int32)[:, None]
        return counts, order

    def document_causal(b, h, q, k):
        return (docs[b, q] == docs[b, k]) & (q >= k)

    kv_num, kv_idx = indices(partial)
    full_num, full_idx = indices(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=document_causal, seq_lengths=(length, length))
