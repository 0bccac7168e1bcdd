"""Token counts as training sees them, for ``launcher validate`` and ``launcher plan``.

One path for both: the tokenizer is loaded the way the training entrypoint loads it
(``entrypoints.models.load_tokenizer``: a pad token and a chat template guaranteed; a ``.gguf`` base's
tokenizer read straight from the file with ``convert=False``, so nothing is dequantised), and every
example is counted with the entrypoint's own tokenisation (``entrypoints.sequences.tokenize``: the chat
template rendered turn by turn, BOS and end-of-turn tokens as training adds them). A count here is the
length of the row training builds, before truncation to ``max_seq_len``.

A Hub id is looked up in the local Hugging Face cache first; ``download=False`` (plan, which never
downloads) stops there, validate then asks the Hub when one quick connect says it is reachable (an
offline machine does not sit through the Hub client's retries). When no tokenizer can be had (no
``transformers``, cloud storage, a gated model without a token) the counter is a clearly labelled
characters/4 estimate with the reason, rather than a failure. ``entrypoints`` is imported lazily, when
a count is asked for, so ``import launcher`` stays light.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from launcher.data import Example
from launcher.errors import reason


@dataclass
class TokenCounter:
    """Counts an example's tokens; ``exact`` is False for the characters/4 estimate, ``reason`` says why."""

    count: Callable[[Example], int]
    label: str
    exact: bool
    reason: str = ""


def estimate_counter(reason: str) -> TokenCounter:
    def count(example: Example) -> int:
        text = example.text if example.text is not None else "".join(c for _, c in example.messages)
        return max(1, round(len(text) / 4))

    return TokenCounter(count, f"ESTIMATED as characters/4 ({reason})", exact=False, reason=reason)


class _NotCached(RuntimeError):
    """A Hub id's tokenizer that is not in the local cache, and ``download=False``; the message is the
    whole reason."""


def token_counter(base_model: str | None, token_env: str = "HF_TOKEN", *, download: bool = True) -> TokenCounter:
    """The base model's tokenizer as a counter, or the characters/4 estimate with the reason.
    ``download=False`` (launcher plan, which never downloads): a Hub id's tokenizer only from the local
    Hugging Face cache."""
    if not base_model:
        return estimate_counter("no base model given; pass --base-model or a job spec for exact counts")
    try:
        tokenizer = _load_tokenizer(base_model, os.environ.get(token_env) or None, download=download)
        from entrypoints.sequences import tokenize
    except _NotCached as exc:
        return estimate_counter(str(exc))
    except Exception as exc:  # noqa: BLE001 - any failure to load means "estimate instead"
        return estimate_counter(f"tokenizer of '{base_model}' not available: {reason(exc)}")

    def count(example: Example) -> int:
        return len(tokenize(tokenizer, example, max_seq_len=sys.maxsize))

    return TokenCounter(count, f"{base_model} tokenizer, chat-templated as training sees it", exact=True)


def _load_tokenizer(base_model: str, token: str | None, *, download: bool):
    """The tokenizer training will use; for a Hub id, the local cache first and no long network waits."""
    try:
        from transformers.utils import logging as hf_logging

        from entrypoints import models
    except ImportError as exc:
        raise RuntimeError(f'{exc.name} is not installed (pip install "launcher[train]")') from None
    hf_logging.disable_progress_bar()  # tiny-llama is saved once on first use; no progress bar for that
    if base_model.startswith(("s3://", "gs://")):
        raise RuntimeError("token counts do not download models from cloud storage")
    if models.is_gguf(base_model):  # its tokenizer straight from the file: nothing is converted here
        return models.load_tokenizer(base_model, convert=False)
    if base_model == "tiny-llama" or Path(base_model).expanduser().is_dir() or base_model.startswith((".", "/", "~")):
        return models.load_tokenizer(base_model)
    from transformers import AutoTokenizer

    try:  # the local Hugging Face cache first: no network, no retries
        tokenizer = AutoTokenizer.from_pretrained(base_model, local_files_only=True)
    except Exception:  # noqa: BLE001
        if not download:
            raise _NotCached(f"{base_model}'s tokenizer is not in the local Hugging Face cache, and plan never downloads "
                             f"(huggingface-cli download {base_model} counts exactly, as does --tokens N)") from None
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
            raise RuntimeError("not in the local cache and HF_HUB_OFFLINE is set") from None
        if not _hub_reachable():
            raise RuntimeError("the Hugging Face Hub cannot be reached") from None
        tokenizer = AutoTokenizer.from_pretrained(base_model, token=token)
    if not tokenizer.chat_template:
        tokenizer.chat_template = models.DEFAULT_CHAT_TEMPLATE
    return tokenizer


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect, so an offline machine does not sit through the Hub client's retries."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False
