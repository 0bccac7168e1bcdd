"""``launcher report`` and ``launcher review``: the evaluation step after a job has finished.

``report`` writes one self-contained HTML file and prints the base-vs-tuned table (the demo ends with
it). ``review`` exports the samples to a CSV for human raters and imports their 1-5 ratings back into
the job's metrics, then prints the automatic scores (fact precision and recall among them) for
comparison. The logic lives in ``launcher.report``; this module is presentation only.
"""

from __future__ import annotations

from pathlib import Path

import typer

from launcher.cli.common import json_option, output
from launcher.errors import UserInputError


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        job: str = typer.Argument(..., help="A job id (any backend), or the path of a job's model dir."),
        out: Path = typer.Option(None, "--out", "-o", help="The HTML file to write (default: MODEL_DIR/report.html)."),
        as_json: bool = json_option(),
    ) -> None:
        """Write an HTML report of a finished job: loss curve, base vs tuned metrics, samples."""
        from launcher.report import render_html, resolve_model_dir, write_atomic

        model = resolve_model_dir(job)
        target = out or model.path / "report.html"
        write_atomic(target, render_html(model))

        def render(_: dict) -> None:
            print_quality_table(model.metrics, title=f"{model.job_id}: base vs tuned")
            typer.echo(f"Report written to {target}")

        output({"job": model.job_id, "report": str(target), "metrics": model.metrics}, as_json, render)

    @app.command()
    def metrics(
        job: str = typer.Argument(..., help="A job id (any backend: a cloud job's model is downloaded once), or a model dir."),
        as_json: bool = json_option(),
    ) -> None:
        """Print a finished job's metrics: base vs tuned scores, eval loss, forgetting (--json: all of metrics.json)."""
        from launcher.report import resolve_model_dir

        model = resolve_model_dir(job)
        output(model.metrics, as_json, lambda m: print_quality_table(m, title=f"{model.job_id}: base vs tuned"))

    @app.command()
    def review(
        job: str = typer.Argument(..., help="A job id (any backend), or the path of a job's model dir."),
        out: Path = typer.Option(None, "--out", "-o", help="Export the samples to this CSV for reviewers."),
        import_path: Path = typer.Option(None, "--import", help="Import the reviewers' filled-in CSV into the job's metrics."),
        force: bool = typer.Option(False, "--force", help="With --out: overwrite an existing file."),
        as_json: bool = json_option(),
    ) -> None:
        """Human review: export samples to rate (factual accuracy, tone, guideline adherence, 1-5), then import the ratings."""
        from launcher.report import CRITERIA, export_review, import_review, resolve_model_dir

        if (out is None) == (import_path is None):
            raise UserInputError("review needs exactly one of --out FILE.csv or --import FILE.csv. To fix: pass one of them")
        model = resolve_model_dir(job)
        if out is not None:
            exported = {"job": model.job_id, "csv": str(out), "samples": export_review(model, out, force=force),
                        "criteria": list(CRITERIA), "next": f"launcher review {job} --import {out}"}
            output(exported, as_json, lambda e: typer.echo(
                f"Wrote {e['samples']} samples to {e['csv']}. Rate {', '.join(CRITERIA)} from 1 to 5 (comment optional), "
                f"then run: {e['next']}"
            ))
            return
        summary = import_review(model, import_path)  # bad rows: a ReviewErrors listing them, exit 2

        def render(summary: dict) -> None:
            _print_review(summary)
            print_quality_table(model.metrics, title="Automatic scores, for comparison: base vs tuned")
            unrated = summary["unrated"]
            typer.echo(
                f"Imported {summary['count']} rated samples into {model.path / 'metrics.json'}"
                + (f"; {unrated} of the job's {summary['samples']} samples are not rated yet and were not imported "
                   f"(rate them in {import_path} and import it again)." if unrated else ".")
            )

        output(summary, as_json, render)


def print_quality_table(metrics: dict, title: str) -> None:
    """The base-vs-tuned table (quality metrics, eval loss, forgetting) on the terminal."""
    from rich.console import Console
    from rich.table import Table

    from launcher.report import QUALITY_NOTE, eval_loss_row, fmt, fmt_change, quality_rows, unmeasured

    table = Table(title=title, title_justify="left")
    for column in ("metric", "base", "tuned", "change"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key, base, tuned, gain in quality_rows(metrics):
        style = "green" if gain and gain > 0 else "red" if gain and gain < 0 else None
        table.add_row(key, fmt(base), fmt(tuned), fmt_change(gain, base), style=style)
    loss = eval_loss_row(metrics)
    if loss:
        base, tuned, change = loss
        table.add_row("eval loss", fmt(base, 4), fmt(tuned, 4), fmt_change(change, base))
    forgetting = metrics.get("forgetting")
    if forgetting:
        table.add_row(
            "general ppl", fmt(forgetting["general_ppl_base"]), fmt(forgetting["general_ppl_tuned"]),
            fmt_change(forgetting["rise_pct"]), style="red" if forgetting.get("warning") else None,
        )
    console = Console(highlight=False)
    console.print(table)
    scored = (metrics.get("quality") or {}).get("samples_scored")
    if scored:
        console.print(f"Scores 0-100 on {scored} held-out examples. {QUALITY_NOTE}", soft_wrap=True)
    missing = unmeasured(metrics)
    if missing:
        console.print(f"n/a: this run did not measure {', '.join(missing)} (an older launcher).", soft_wrap=True)
    if forgetting and forgetting.get("warning"):
        console.print(
            f"Warning: general-text perplexity rose {forgetting['rise_pct']:.1f}% (threshold {forgetting['threshold_pct']:.1f}%): "
            "the model may have forgotten general skills.", style="yellow", soft_wrap=True,
        )


def _print_review(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Human review ({summary['count']} samples)", title_justify="left")
    table.add_column("criterion")
    table.add_column("mean", justify="right")
    for score in range(1, 6):
        table.add_column(str(score), justify="right")
    for criterion in summary["criteria"]:
        dist = summary["distribution"][criterion]
        table.add_row(criterion, f"{summary['means'][criterion]:.2f}", *(str(dist[str(s)]) for s in range(1, 6)))
    Console(highlight=False).print(table)
