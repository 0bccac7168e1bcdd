"""The Python API: ``launch`` a job on a backend, get a ``JobHandle``, or ``attach`` to one by id.

    from launcher import Job, launch, attach
    handle = launch(Job.from_yaml("job.yaml"), backend="local")
    info = handle.wait()            # streams the logs; raises JobFailedError if the job failed
    print(handle.metrics()["quality"]["tuned"])
    attach(handle.job_id).status()  # from any process, later

``launch`` is idempotent: the job id comes from the spec and the run name, so launching the same spec
again re-attaches to a pending, running or succeeded job and resumes an interrupted, failed or cancelled
one. Everything is checked before anything is staged: the data files (``launcher.data.validate_dataset``),
what the backend supports, and that the job fits the GPU asked for (``launcher.plan.check_fits``).

``wait`` raises ``JobFailedError`` when the job fails (a script should not carry on with no model), and
returns the final ``JobInfo`` otherwise, a cancelled or interrupted job included: those were asked for,
or can be resumed by launching again.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from launcher.backends import registry
from launcher.backends.base import Backend, JobInfo, JobState
from launcher.errors import DataError, JobFailedError, NotFoundError, UserInputError, did_you_mean
from launcher.spec import JobSpec

Job = JobSpec


class JobHandle:
    """A job on some backend; cheap to make, holds no process or connection."""

    def __init__(self, job_id: str, backend: Backend, reattached: bool = False):
        self.job_id = job_id
        self.backend = backend
        self.reattached = reattached

    def __repr__(self) -> str:
        return f"JobHandle({self.job_id!r}, backend={self.backend.name!r})"

    def status(self) -> JobInfo:
        return self.backend.status(self.job_id)

    def logs(self, follow: bool = False) -> Iterator[str]:
        return self.backend.logs(self.job_id, follow=follow)

    def cancel(self, **options: Any) -> JobInfo:
        """Stop the job; it checkpoints first where it can (local: ``grace_s=`` seconds before SIGKILL)."""
        return self.backend.cancel(self.job_id, **options)

    def metrics(self) -> dict[str, Any]:
        """The finished job's ``metrics.json`` (schema 1)."""
        return self.backend.metrics(self.job_id)

    def wait(self, logs: bool = True, poll: float = 2.0) -> JobInfo:
        """Block until the job stops running; with ``logs``, print its log lines as they come.
        Returns the final JobInfo; raises JobFailedError if the job failed."""
        if logs:
            for line in self.logs(follow=True):
                print(line, flush=True)
        while (info := self.status()).state in (JobState.PENDING, JobState.RUNNING, JobState.STOPPING):
            time.sleep(poll)
        if info.state is JobState.FAILED:
            fix = "" if "To fix" in info.message else (
                f". To fix: read 'launcher logs {self.job_id}', remove the cause, then launch it again "
                "(it resumes from its newest checkpoint)"
            )
            raise JobFailedError(f"job {self.job_id} failed: {info.message}{fix}")
        return info


def launch(job: JobSpec | str | Path, backend: str = "local", run_name: str = "run1", new_run: bool = False) -> JobHandle:
    """Submit ``job`` to ``backend`` (or re-attach to it); nothing is staged when a check fails."""
    spec = job if isinstance(job, JobSpec) else JobSpec.from_yaml(job)
    if new_run:
        run_name = _dt.datetime.now(_dt.timezone.utc).strftime("r%m%d-%H%M%S")  # 12 characters, the most a run name has
    job_id = spec.job_id(run_name)  # validates the run name
    runner = registry.get(backend)
    try:
        info = runner.status(job_id)
        if info.state in (JobState.PENDING, JobState.RUNNING, JobState.STOPPING, JobState.SUCCEEDED):
            registry.record_job(job_id, runner.name, info.created_at)
            return JobHandle(job_id, runner, reattached=True)
    except NotFoundError:
        pass
    check(spec, runner)
    info = runner.submit(spec, run_name)
    registry.record_job(job_id, runner.name, info.created_at)
    return JobHandle(job_id, runner, reattached=bool(info.extra.get("reattached")))


def check(spec: JobSpec, backend: Backend) -> None:
    """Everything ``launch`` checks before staging: backend limits, the data, and the GPU fit."""
    from launcher.data import validate_dataset

    getattr(backend, "check", lambda spec: None)(spec)
    data = spec.data
    for report in validate_dataset(data.train, data.eval, data.general_eval):
        if report.errors:
            more = len(report.errors) - 1
            extra = f" (and {more} more problem{'s' if more > 1 else ''}; run 'launcher validate' to see all)" if more else ""
            raise DataError(f"{report.errors[0]}{extra}")
    try:
        plan = importlib.import_module("launcher.plan")
    except ModuleNotFoundError as exc:
        if exc.name != "launcher.plan":
            raise
        return
    check_fits = getattr(plan, "check_fits", None)
    if check_fits is not None:
        check_fits(spec)


def attach(job_id: str) -> JobHandle:
    """A handle to a job submitted earlier, from any process (NotFoundError for an unknown id)."""
    name = registry.backend_of(job_id)
    backend = registry.get(name)
    backend.status(job_id)  # raises NotFoundError when the backend no longer knows it
    return JobHandle(job_id, backend, reattached=True)


def jobs(state: JobState | str | None = None, backend: str | None = None) -> list[JobInfo]:
    """Jobs on ``backend`` (default: every backend in the index, and local), newest first."""
    if isinstance(state, str):
        state = parse_state(state)
    names = [backend] if backend else sorted({"local", *(e["backend"] for e in registry.read_index().values())})
    found = [info for name in names for info in registry.get(name).list(state)]
    return sorted(found, key=lambda info: info.created_at, reverse=True) if len(names) > 1 else found


def parse_state(text: str) -> JobState:
    try:
        return JobState(text.strip().upper())
    except ValueError:
        names = [s.value for s in JobState]
        raise UserInputError(
            f"unknown job state '{text}'.{did_you_mean(text.upper(), names)} To fix: use one of {', '.join(names)}"
        ) from None


__all__ = ["Job", "JobHandle", "attach", "check", "jobs", "launch", "parse_state"]
