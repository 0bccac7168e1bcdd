"""``launcher validate``: check a dataset (or a job spec's datasets) before a GPU hour is spent.

The checks themselves are pure Python in ``launcher.data.validate_dataset``; the token lengths come
from ``launcher.tokens.token_counter`` (the model's tokenizer and the training entrypoint's own
tokenisation, exactly the rows training builds, or a clearly-labelled characters/4 estimate when the
tokenizer cannot be had), the same counts ``launcher plan`` uses. This module adds the presentation.
"""

from __future__ import annotations

from pathlib import Path

import typer

from launcher.cli.common import abort, json_option, output
from launcher.data import DatasetReport, dataset_files, validate_dataset
from launcher.tokens import TokenCounter, token_counter

MAX_LISTED_ERRORS = 20


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
