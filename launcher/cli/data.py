"""``launcher validate``: check a dataset (or a job spec's datasets) before a GPU hour is spent.

The checks themselves are pure Python in ``launcher.data.validate_dataset``; this module adds the
model's tokenizer (token lengths are counted on the chat-templated text, exactly what training sees)
and the presentation. The tokenizer is loaded lazily and only when a base model is known; when it
cannot be had (no ``transformers``, a Hub that cannot be reached, a gated model without a token) the
lengths fall back to a clearly-labelled characters/4 estimate rather than failing the check.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import typer

from launcher.cli.common import abort, json_option, output
from launcher.data import DatasetReport, Example, dataset_files, validate_dataset
from launcher.errors import reason

MAX_LISTED_ERRORS = 20


@dataclass
class TokenCounter:
    """Counts an example's tokens; ``exact`` is False for the characters/4 estimate."""

    count: Callable[[Example], int]
    label: str
    exact: bool


def estimate_counter(reason: str) -> TokenCounter:
    def count(example: Example) -> int:
        text = example.text if example.text is not None else "".join(c for _, c in example.messages)
        return max(1, round(len(text) / 4))

    return TokenCounter(count, f"ESTIMATED as characters/4 ({reason})", exact=False)


def token_counter(base_model: str | None, token_env: str = "HF_TOKEN") -> TokenCounter:
    """The base model's tokenizer as a counter, or the characters/4 estimate with the reason.

    Counting goes through the training entrypoint's own tokenisation (``entrypoints.sequences``), so a
    length here is exactly the length of the row training builds (chat template, EOS and all).
    """
    if not base_model:
        return estimate_counter("no base model given; pass --base-model or a job spec for exact counts")
    try:
        tokenizer = _load_tokenizer(base_model, os.environ.get(token_env) or None)
        from entrypoints.sequences import tokenize
    except Exception as exc:  # noqa: BLE001 - any failure to load means "estimate instead"
        return estimate_counter(f"tokenizer of '{base_model}' not available: {reason(exc)}")

    def count(example: Example) -> int:
        return len(tokenize(tokenizer, example, max_seq_len=sys.maxsize))

    return TokenCounter(count, f"{base_model} tokenizer, chat-templated as training sees it", exact=True)


def _load_tokenizer(base_model: str, token: str | None):
    """The tokenizer training will use; for a Hub id, the local cache first and no long network waits."""
    try:
        from transformers.utils import logging as hf_logging

        from entrypoints import models
    except ImportError as exc:
        raise RuntimeError(f'{exc.name} is not installed (pip install "launcher[train]")') from None
    hf_logging.disable_progress_bar()  # tiny-llama is saved once on first use; no progress bar for that
    if base_model.startswith(("s3://", "gs://")):
        raise RuntimeError("validate does not download models from cloud storage")
    if models.is_gguf(base_model):  # its tokenizer straight from the file: validate converts nothing
        return models.load_tokenizer(base_model, convert=False)
    if base_model == "tiny-llama" or Path(base_model).expanduser().is_dir() or base_model.startswith((".", "/", "~")):
        return models.load_tokenizer(base_model)
    from transformers import AutoTokenizer

    try:  # the local Hugging Face cache first: no network, no retries
        tokenizer = AutoTokenizer.from_pretrained(base_model, local_files_only=True)
    except Exception:  # noqa: BLE001
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


def register(app: typer.Typer) -> None:
    @app.command()
    def validate(
        target: Path = typer.Argument(..., help="A JSONL dataset (file or folder) or a job spec (.yaml)."),
        eval_data: Path = typer.Option(None, "--eval", help="An eval dataset to check (and to check for overlap with train)."),
        base_model: str = typer.Option(None, "--base-model", help="Count tokens with this model's tokenizer (default: the spec's)."),
        max_seq_len: int = typer.Option(None, "--max-seq-len", help="Flag examples longer than this (default: the spec's, else 1024)."),
        as_json: bool = json_option(),
    ) -> None:
        """Check datasets: format, counts, duplicates, role order, token lengths, train/eval overlap."""
        from launcher.spec import Hyperparameters, JobSpec

        token_env = "HF_TOKEN"
        general = None
        if target.suffix.lower() in {".yaml", ".yml"}:
            spec = JobSpec.from_yaml(target)
            train, eval_uri, general = spec.data.train, spec.data.eval, spec.data.general_eval
            base_model = base_model or spec.base_model
            max_seq_len = max_seq_len or spec.training.max_seq_len
            token_env = spec.hf_token_env
        else:
            train, eval_uri = str(target), None
        if eval_data is not None:
            eval_uri = str(eval_data)
        max_seq_len = max_seq_len or Hyperparameters.model_fields["max_seq_len"].default
        for uri in (train, eval_uri, general):  # a dataset that is not there is one line, not a report
            if uri is not None and "://" not in str(uri):
                dataset_files(uri)
        counter = token_counter(base_model, token_env)
        reports = validate_dataset(train, eval_uri, general, count_tokens=counter.count, max_seq_len=max_seq_len)
        payload = {
            "ok": all(r.ok for r in reports),
            "max_seq_len": max_seq_len,
            "tokenizer": {"label": counter.label, "exact": counter.exact},
            "datasets": [r.to_dict(max_seq_len) for r in reports],
        }
        output(payload, as_json, lambda _: _print_reports(reports, counter, max_seq_len))
        _exit_on_errors(reports)


def _print_reports(reports: list[DatasetReport], counter: TokenCounter, max_seq_len: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    table = Table(title="Datasets", title_justify="left")
    table.add_column("")
    for r in reports:
        table.add_column(r.channel, justify="right", overflow="fold")
    rows = {
        "path": [_short(r.path) for r in reports],
        "format": [", ".join(r.formats) or "-" for r in reports],
        "examples": [str(r.examples) for r in reports],
        "invalid lines": [str(len(r.errors)) for r in reports],
        "duplicates": [str(r.duplicates) for r in reports],
        "near-empty": [str(r.near_empty) for r in reports],
        f"over max_seq_len {max_seq_len}": [str(r.over_max_seq_len) if r.token_lengths else "-" for r in reports],
        "prompts also in train": [str(r.overlap_with_train) if r.channel != "train" else "-" for r in reports],
    }
    for name, values in rows.items():
        table.add_row(name, *values)
    console.print(table)
    console.print(f"Token lengths: {counter.label}", style=None if counter.exact else "yellow")
    for r in reports:
        buckets = r.histogram(max_seq_len)
        if not buckets:
            continue
        widest = max(n for _, n in buckets) or 1
        stats = r.to_dict(max_seq_len)["tokens"]
        console.print(f"  {r.channel} (min {stats['min']}, median {stats['median']}, p95 {stats['p95']}, max {stats['max']}):")
        for label, n in buckets:
            bar = "#" * max(1 if n else 0, round(30 * n / widest))
            console.print(f"    {label:>11} {n:>7} {bar}")
    for r in reports:
        for warning in r.warnings:
            console.print(f"Warning: {warning}", style="yellow", soft_wrap=True)
    if all(r.ok for r in reports):
        total = sum(r.examples for r in reports)
        console.print(f"OK: {total} examples in {len(reports)} dataset{'s' if len(reports) > 1 else ''}, no invalid lines.")


def _short(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def _exit_on_errors(reports: list[DatasetReport]) -> None:
    errors = [e for r in reports for e in r.errors]
    if not errors:
        return
    if len(errors) == 1:
        abort(errors[0], 2)
    listed = errors[:MAX_LISTED_ERRORS]
    if len(errors) > MAX_LISTED_ERRORS:
        listed.append(f"... and {len(errors) - MAX_LISTED_ERRORS} more")
    bad = ", ".join(f"{r.channel} ({len(r.errors)})" for r in reports if r.errors)
    abort(
        f"{len(errors)} problems in {bad}, listed above. To fix: correct or remove those lines, then validate again",
        2,
        details=listed,
    )
