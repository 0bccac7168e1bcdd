"""Job commands: ``train``, ``status``, ``logs``, ``cancel``, ``list``.

Thin wrappers over ``launcher.api``: a job id is all a later command needs (``attach`` finds the
backend in ``$LAUNCHER_HOME/index.json``). ``train`` without ``--detach`` streams the logs until the job
ends and exits 0 on success, 1 otherwise; Ctrl-C only detaches, the job keeps running. With ``--json``
the result goes to stdout as JSON and everything meant for people goes to stderr (``common.output`` and
``common.say``; ``logs --json`` is one JSON object a line). Rich is imported inside the commands that draw
tables, so ``launcher --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from launcher.cli.common import json_option, output, print_json, say

if TYPE_CHECKING:
    from launcher.backends.base import JobInfo

_STATE_STYLE = {
    "PENDING": "yellow",
    "RUNNING": "cyan",
    "STOPPING": "yellow",
    "INTERRUPTED": "magenta",
    "SUCCEEDED": "green",
    "FAILED": "red",
    "CANCELLED": "dim",
}


def train(
    spec_path: Path = typer.Argument(..., metavar="JOB.yaml", help="The job spec (write one with 'launcher init')."),
    backend: str = typer.Option(
        "local", "--backend", "-b", envvar="LAUNCHER_BACKEND", help="Where the job runs (env: LAUNCHER_BACKEND; default local)."
    ),
    run_name: str = typer.Option(
        "run1",
        "--run-name",
        envvar="LAUNCHER_RUN_NAME",
        help="Part of the job id: the same spec and run name re-attach to the same job (env: LAUNCHER_RUN_NAME).",
    ),
    new_run: bool = typer.Option(False, "--new-run", help="Start a fresh job (a run name from the current time)."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Return once the job is submitted; do not stream its logs."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the spec and print the job id and the launch request; stage and launch nothing."),
    gpus: int = typer.Option(None, "--gpus", min=1, help="Local backend: train on N GPUs of this machine (torchrun, one process per GPU)."),
    as_json: bool = json_option(),
) -> None:
    """Validate the data, stage it and start the job, or re-attach to the job this spec already started."""
    from launcher.api import launch, request
    from launcher.backends.base import JobState
    from launcher.errors import JobFailedError

    if dry_run:
        built, runner, warnings = request(spec_path, backend=backend, run_name=run_name, new_run=new_run, gpus=gpus)
        for warning in warnings:
            say(f"Warning: {warning}", as_json)
        described = {"job_id": built.job_id, "backend": runner.name, "request": runner.describe(built)}
        if not as_json:
            say(f"Job {built.job_id} on the {runner.name} backend (dry run: nothing staged or launched). It would send:", as_json)
        print_json(described if as_json else described["request"])
        return
    handle = launch(spec_path, backend=backend, run_name=run_name, new_run=new_run, gpus=gpus)
    for warning in handle.warnings:
        say(f"Warning: {warning}", as_json)
    info = handle.status()
    if handle.reattached:
        say(f"Re-attached to job {handle.job_id} ({info.state.value}): same spec and run name. Use --new-run for a fresh job.", as_json)
    elif info.attempt > 1:
        where = f"from step {info.checkpoint_step}" if info.checkpoint_step else "from the start (no checkpoint was saved)"
        say(f"Resuming job {handle.job_id} {where} (attempt {info.attempt}) on the {backend} backend.", as_json)
    else:
        say(f"Submitted job {handle.job_id} to the {backend} backend.", as_json)
    for key in ("logs", "console"):  # where a cloud job's logs and page are
        if info.extra.get(key):
            say(f"{key.capitalize()}: {info.extra[key]}", as_json)
    if detach or info.state is JobState.SUCCEEDED:
        if detach:
            say(f"Follow it with 'launcher logs -f {handle.job_id}'; check it with 'launcher status {handle.job_id}'.", as_json)
        output(info, as_json)
        return
    try:
        for line in handle.logs(follow=True):
            say(line, as_json)
        info = handle.wait(logs=False, poll=0.5)
    except KeyboardInterrupt:
        say(f"Detached; job {handle.job_id} keeps running. Re-attach with 'launcher logs -f {handle.job_id}'.", as_json)
        raise typer.Exit(130) from None
    if info.state is not JobState.SUCCEEDED:
        raise JobFailedError(
            f"job {handle.job_id} ended {info.state.value}: {info.message or 'no reason recorded'}. "
            "To fix: run the same command again to resume it from its newest checkpoint"
        )
    say(f"Job {handle.job_id} SUCCEEDED. Model and metrics: {info.output}", as_json)
    output(info, as_json)


def status(
    job_id: str = typer.Argument(..., metavar="JOB_ID", help="The job id ('launcher list' shows them)."),
    as_json: bool = json_option(),
) -> None:
    """Show one job's state."""
    from launcher.api import attach

    output(attach(job_id).status(), as_json, _print_status)


def _print_status(info: JobInfo) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    rows = {
        "job id": info.job_id,
        "state": f"[{_STATE_STYLE[info.state.value]}]{info.state.value}[/]",
        "backend": info.backend,
        "name": info.name,
        "created": info.created_at,
        "updated": info.updated_at,
        "message": info.message,
        "attempt": str(info.attempt),
        "checkpoint": f"step {info.checkpoint_step}" if info.checkpoint_step else "",
        "native id": info.native_id,
        "output": info.output,
        **{key.replace("_", " "): str(value) for key, value in info.extra.items() if value not in (None, "")},
    }
    for key, value in rows.items():
        if value:
            table.add_row(key, value)
    Console(soft_wrap=True).print(table)


def logs(
    job_id: str = typer.Argument(..., metavar="JOB_ID", help="The job id."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines until the job ends."),
    as_json: bool = json_option('One JSON object a line on stdout, {"job_id": ..., "line": ...}; an error as {"error": ..., "exit_code": ...}.'),
) -> None:
    """Print a job's log (stdout and stderr of every attempt)."""
    from launcher.api import attach

    handle = attach(job_id)
    try:
        for line in handle.logs(follow=follow):
            if as_json:
                print_json({"job_id": job_id, "line": line}, indent=None)
            else:
                typer.echo(line)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def cancel(
    job_id: str = typer.Argument(..., metavar="JOB_ID", help="The job id."),
    grace: float = typer.Option(
        None,
        "--grace",
        envvar="LAUNCHER_CANCEL_GRACE",
        help="Local backend: seconds between SIGTERM (the job checkpoints) and SIGKILL (env: LAUNCHER_CANCEL_GRACE; default 30).",
    ),
    as_json: bool = json_option(),
) -> None:
    """Stop a job; it saves a checkpoint first, and submitting it again resumes from there."""
    import os

    from launcher.api import attach

    if grace is not None:  # a local-backend setting; the API's cancel takes no backend options
        os.environ["LAUNCHER_CANCEL_GRACE"] = str(grace)
    handle = attach(job_id)
    info = handle.cancel()
    output(info, as_json, lambda i: typer.echo(f"Job {job_id}: {i.state.value}" + (f" ({i.message})" if i.message else "")))


def list_jobs(
    state: str = typer.Option(None, "--state", "-s", help="Only jobs in this state (e.g. RUNNING, FAILED)."),
    backend: str = typer.Option(None, "--backend", "-b", help="Only this backend's jobs (default: every backend used here)."),
    as_json: bool = json_option(),
) -> None:
    """List jobs, newest first."""
    from launcher.api import jobs

    output(jobs(state=state, backend=backend), as_json, lambda found: _print_jobs(found, state))


def _print_jobs(found: list[JobInfo], state: str | None) -> None:
    if not found:
        typer.echo("No jobs." + ("" if state is None else f" (state {state.upper()})"))
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE)
    for column in ("JOB ID", "STATE", "BACKEND", "CREATED (UTC)"):
        table.add_column(column, no_wrap=True)  # whole ids, to be copied; the message wraps
    table.add_column("MESSAGE")
    for info in found:
        state = f"[{_STATE_STYLE[info.state.value]}]{info.state.value}[/]"
        table.add_row(info.job_id, state, info.backend, info.created_at.replace("T", " ")[5:16], info.message)
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("status")(status)
    app.command("logs")(logs)
    app.command("cancel")(cancel)
    app.command("list")(list_jobs)
