"""The Python API: ``launch`` a job on a backend, get a ``JobHandle``, or ``attach`` to one by id.

    from launcher import Job, launch, attach
    handle = launch(Job.from_yaml("job.yaml"), backend="local")
    info = handle.wait()            # streams the logs; raises JobFailedError if the job failed
    print(handle.metrics()["quality"]["tuned"])
    attach(handle.job_id).status()  # from any process, later

``request`` builds the one ``LaunchRequest`` a backend receives, after every check (the data files,
what the backend supports, that the job fits the GPU asked for); nothing is staged before. ``launch``
is idempotent, in this one place for every backend: the job id comes from what defines the training
(``JobSpec.identity``: settings, compute, the data's content, the backend) and the run name, and the
backend is asked for that id before anything is created. A pending, running (a platform restart
included) or succeeded job is re-attached; an interrupted, failed or cancelled one is submitted again
as its next attempt and resumes from its newest checkpoint.

``wait`` raises ``JobFailedError`` when the job fails (a script should not carry on with no model), and
returns the final ``JobInfo`` otherwise, a cancelled or interrupted job included: those were asked for,
or can be resumed by launching again.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from launcher import index
from launcher.backends import registry
from launcher.backends.base import Backend, JobExists, JobInfo, JobRef, JobState, LaunchRequest
from launcher.errors import BackendError, DataError, JobFailedError, LauncherError, MissingExtraError, NotFoundError, UserInputError, did_you_mean
from launcher.spec import JobSpec, base_model_digest

Job = JobSpec


class JobHandle:
    """A job on some backend; cheap to make, holds no process or connection."""

    def __init__(self, ref: JobRef, backend: Backend, reattached: bool = False, warnings: list[str] | None = None):
        self.ref = ref
        self.backend = backend
        self.reattached = reattached
        self.warnings = list(warnings or [])  # what the backend's check said about the spec

    @property
    def job_id(self) -> str:
        return self.ref.job_id

    def __repr__(self) -> str:
        return f"JobHandle({self.job_id!r}, backend={self.backend.name!r})"

    def status(self) -> JobInfo:
        info = self.backend.status(self.ref)
        info.reattached = self.reattached
        return info

    def logs(self, follow: bool = False) -> Iterator[str]:
        return self.backend.logs(self.ref, follow=follow)

    def cancel(self) -> JobInfo:
        """Stop the job; it checkpoints first where it can, and launching it again resumes."""
        return self.backend.cancel(self.ref)

    def artifacts(self) -> Path:
        """The finished job's model dir as a local folder, whatever the backend (downloaded if remote)."""
        return self.backend.artifacts(self.ref)

    def metrics(self) -> dict[str, Any]:
        """The finished job's ``metrics.json``."""
        path = self.artifacts() / "metrics.json"
        if not path.is_file():
            info = self.status()
            raise NotFoundError(
                f"job '{self.job_id}' has no metrics yet ({info.state.value}): {path} does not exist. "
                "To fix: wait until the job has succeeded"
            )
        return json.loads(path.read_text(encoding="utf-8"))

    def wait(self, logs: bool = True, poll: float = 2.0) -> JobInfo:
        """Block until the job stops running; with ``logs``, print its log lines as they come.
        Returns the final JobInfo; raises JobFailedError if the job failed."""
        if logs:
            for line in self.logs(follow=True):
                print(line, flush=True)
        while (info := self.status()).state.active:
            time.sleep(poll)
        if info.state is JobState.FAILED:
            fix = "" if "To fix" in info.message else (
                f". To fix: read 'launcher logs {self.job_id}', remove the cause, then launch it again "
                "(it resumes from its newest checkpoint)"
            )
            raise JobFailedError(f"job {self.job_id} failed: {info.message}{fix}")
        return info


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def request(job: JobSpec | str | Path, backend: str = "local", run_name: str = "run1", new_run: bool = False
            ) -> tuple[LaunchRequest, Backend, list[str]]:
    """Check ``job`` for ``backend`` and build its launch request: (request, backend, warnings).
    Nothing is staged or launched."""
    from launcher.data import content_digest

    spec = job if isinstance(job, JobSpec) else JobSpec.from_yaml(job)
    if new_run:
        run_name = _dt.datetime.now(_dt.timezone.utc).strftime("r%m%d-%H%M%S")  # 12 characters, the most a run name has
    runner = registry.get(backend)
    warnings = check(spec, runner)
    channels = spec.data.channels()
    identity = spec.identity(runner.name, {name: content_digest(uri) for name, uri in channels.items()},
                             base_model=base_model_digest(spec.base_model))
    job_id = spec.job_id(identity, run_name)
    config = spec.train_config()
    accelerator = spec.compute.accelerator
    section = getattr(spec, runner.name, None)
    options = section.model_dump(mode="json") if section is not None else {}
    device = options.pop("device", None) or (accelerator.kind if accelerator else "auto")
    built = LaunchRequest(
        job_id=job_id, backend=runner.name, name=spec.name, run_name=run_name, config=config, channels=channels,
        compute=spec.compute, device=device, processes_per_host=accelerator.count if accelerator else 1,
        output_uri=spec.output, image=options.pop("image_uri", None), secrets={"hf_token": config.hf_token_env},
        tags={**spec.tags, "launcher-job-id": job_id, "launcher-run": run_name}, backend_options=options,
        identity=identity,
    )
    return built, runner, warnings


def launch(job: JobSpec | str | Path, backend: str = "local", run_name: str = "run1", new_run: bool = False) -> JobHandle:
    """Submit ``job`` to ``backend``, or re-attach to it; nothing is staged when a check fails."""
    built, runner, warnings = request(job, backend, run_name, new_run)
    found = runner.find(built.job_id)
    attempt = 1
    if found is not None:
        info = runner.status(found)
        if info.state.active or info.state is JobState.SUCCEEDED:
            index.record(info.ref, info.created_at)
            return JobHandle(info.ref, runner, reattached=True, warnings=warnings)
        attempt = info.attempt + 1  # interrupted, failed or cancelled: the next attempt resumes it
    try:
        ref = runner.submit(dataclasses.replace(built, attempt=attempt))
    except JobExists as exists:  # another launch created it between our look-up and our create
        index.record(exists.ref, _now())
        return JobHandle(exists.ref, runner, reattached=True, warnings=warnings)
    index.record(ref, _now())
    return JobHandle(ref, runner, reattached=False, warnings=warnings)


def check(spec: JobSpec, backend: Backend) -> list[str]:
    """Everything launching checks before staging: backend limits, the data, and the GPU fit.
    Returns the backend's warnings."""
    from launcher.data import validate_dataset
    from launcher.plan import check_fits

    warnings = backend.check(spec)
    data = spec.data
    for report in validate_dataset(data.train, data.eval, data.general_eval):
        if report.errors:
            more = len(report.errors) - 1
            extra = f" (and {more} more problem{'s' if more > 1 else ''}; run 'launcher validate' to see all)" if more else ""
            raise DataError(f"{report.errors[0]}{extra}")
    check_fits(spec)
    return warnings


def attach(job_id: str, backend: str | None = None) -> JobHandle:
    """A handle to a job submitted earlier, from any process. The index first; a job it lacks (another
    machine, CI) is looked up on the backends, then recorded. NotFoundError for an unknown id."""
    known = [ref for ref in index.refs(job_id) if backend in (None, ref.backend)]
    if len(known) > 1:
        names = ", ".join(sorted(ref.backend for ref in known))
        raise UserInputError(f"job '{job_id}' is known on several backends ({names}). To fix: pass --backend with one of them")
    if known:
        runner = registry.get(known[0].backend)
        info = runner.status(known[0])  # NotFoundError when the backend no longer knows it
        index.record(info.ref)
        return JobHandle(info.ref, runner, reattached=True)
    for name in [backend] if backend else registry.names():
        try:
            runner = registry.get(name)
            if not backend and not runner.configured():
                continue
            ref = runner.find(job_id)
        except MissingExtraError:
            continue  # a backend whose SDK is not installed cannot hold this user's jobs
        except LauncherError:
            if backend:
                raise
            continue
        if ref is not None:
            index.record(ref, _now())
            return JobHandle(ref, runner, reattached=True)
    known_ids = index.job_ids()
    raise NotFoundError(
        f"no job '{job_id}' in {index._path()} or on the {backend or ', '.join(registry.names())} backend"
        f"{'' if backend else 's'}.{did_you_mean(job_id, known_ids)} To fix: run 'launcher list' to see job ids "
        "(or set LAUNCHER_HOME to the folder the job was submitted from)"
    )


def jobs(state: JobState | str | None = None, backend: str | None = None) -> list[JobInfo]:
    """Jobs on ``backend`` (default: every backend in the index, and local), newest first."""
    if isinstance(state, str):
        state = parse_state(state)
    names = [backend] if backend else sorted({"local", *index.backends()})
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


# --- serving -------------------------------------------------------------------------------------------
def resolve_model(model: str | Path) -> tuple[Path, str]:
    """(a local model dir, a default endpoint name) for what a user deploys: a model dir (local, ``s3://``,
    ``gs://``) or a finished job's id (its model dir through its backend's ``artifacts``)."""
    folder, name, _ = _resolve_model(model)
    return folder, name


def _resolve_model(model: str | Path) -> tuple[Path, str, str]:
    """``resolve_model`` plus where the model lies in a cloud store, if it does (a job's output URI, or the
    ``s3://`` / ``gs://`` URI given): a cloud backend serves it from there instead of uploading a copy."""
    from launcher import artifacts
    from launcher.backends._local_serving import endpoint_name

    text = str(model)
    if "://" in text:
        return artifacts.model_dir(text), endpoint_name(text.rstrip("/").rsplit("/", 1)[-1]), text
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            raise NotFoundError(f"'{text}' holds neither adapter_config.json nor config.json: it is no model dir. "
                                "To fix: pass a finished job's id or its model folder (launcher status JOB shows it)")
        name = path.parent.name if path.name == "model" else path.name
        return path.absolute(), endpoint_name(name), ""
    if text.startswith((".", "/", "~")) or "/" in text:
        raise NotFoundError(f"model dir '{text}' does not exist. To fix: pass a job id ('launcher list') or a model dir")
    handle = attach(text)
    info = handle.status()
    if info.state is not JobState.SUCCEEDED:
        raise UserInputError(f"job '{text}' is {info.state.value}, not SUCCEEDED: it has no model to serve yet. "
                             f"To fix: wait for it ('launcher status {text}'), or deploy another job")
    folder = handle.artifacts()
    if not (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        raise NotFoundError(f"job '{text}' left no model in {folder}. To fix: read 'launcher logs {text}'")
    return folder, endpoint_name(text), info.output if "://" in info.output else ""


LOCATION_OPTIONS = ("region", "project", "staging_bucket", "bucket", "prefix")  # where a cloud endpoint lives


def _endpoint_backend(name: str, backend: str | None) -> Backend:
    runner = registry.get(backend or index.endpoint_backend(name) or "local")
    location = index.endpoint_location(name)
    if location:
        runner._options = location  # the cloud backends look the endpoint up there, not only in the environment's
    return runner


def deploy(model: str | Path, backend: str = "local", name: str | None = None, *, port: int | None = None,
           adapters: dict[str, str | Path] | None = None, capture: str | None = None, capture_percent: float = 100.0,
           max_new_tokens_cap: int = 1024, api_key_env: str = "LAUNCHER_API_KEY", local_check: bool = True,
           monitor_sinks: list[str] | None = None, **options: Any):
    """Serve ``model`` (a job id or a model dir) on ``backend`` as endpoint ``name`` (default: from the
    job id or folder). Returns the ``Endpoint`` once it answers; an endpoint of that name already serving
    the same model is re-attached. ``options`` are the backend's own (local: the server's, e.g. ``threads``;
    SageMaker: ``instance_type``, ``instance_count``, ``serving_image``, ...; Vertex AI: ``machine_type``,
    ``min_replicas``, ...). A cloud backend first runs the serving contract on this machine (``local_check``).
    ``monitor_sinks`` attaches a monitor: ``launcher monitor poll --endpoint NAME`` then reads the endpoint's
    capture against the model's baseline and sends alerts there (the sinks are checked before anything is
    deployed)."""
    from launcher.backends.base import EndpointSpec

    if monitor_sinks:
        from monitoring.sinks import parse_sinks

        parse_sinks(list(monitor_sinks))  # a bad sink is one line now, not after a 10-minute deploy
    if not 0 <= capture_percent <= 100:
        raise UserInputError(f"capture percent {capture_percent:g} is not a percentage. To fix: pass 0 to 100")
    if max_new_tokens_cap < 1:
        raise UserInputError(f"max_new_tokens_cap {max_new_tokens_cap} must be at least 1. To fix: pass a positive number")
    runner = registry.get(backend)
    folder, default_name, model_uri = _resolve_model(model)
    extra = {}
    for adapter, path in (adapters or {}).items():
        extra[adapter] = str(resolve_model(path)[0])
    spec = EndpointSpec(name=name or default_name, adapters=extra, port=port, capture=capture, capture_percent=capture_percent,
                        max_new_tokens_cap=max_new_tokens_cap, api_key_env=api_key_env, source=str(model), options=options,
                        model_uri=model_uri, local_check=local_check)
    location = {key: str(options[key]) for key in LOCATION_OPTIONS if (options or {}).get(key)}
    try:
        endpoint = runner.deploy(folder, spec)
    except BackendError:  # a cloud endpoint may exist, Failed: 'endpoints' and 'undeploy NAME' must find it
        index.record_endpoint(spec.name, runner.name, _now(), location)
        raise
    monitor = None
    if monitor_sinks:
        monitor = {"source": endpoint.capture, "baseline": str(folder), "sinks": list(monitor_sinks)}
    index.record_endpoint(endpoint.name, runner.name, _now(), location, monitor)
    return endpoint


def chat_request(prompt: str | dict[str, Any], *, max_tokens: int | None = None, model: str | None = None,
                 temperature: float | None = None) -> dict[str, Any]:
    """An OpenAI chat completion body: ``prompt`` as one user turn, or a whole request dict as given."""
    request = dict(prompt) if isinstance(prompt, dict) else {"messages": [{"role": "user", "content": prompt}]}
    for key, value in (("max_tokens", max_tokens), ("model", model), ("temperature", temperature)):
        if value is not None:
            request[key] = value
    return request


def invoke(name: str, prompt: str | dict[str, Any], *, backend: str | None = None, stream: bool = False, **settings: Any):
    """Ask endpoint ``name``: ``prompt`` (a user turn) or a chat request dict. Returns the OpenAI chat
    completion object, or with ``stream`` an iterator of the answer's text pieces."""
    runner = _endpoint_backend(name, backend)
    request = chat_request(prompt, **settings)
    return runner.invoke_stream(name, request) if stream else runner.invoke(name, request)


def undeploy(name: str, backend: str | None = None):
    """Stop endpoint ``name`` (its capture is flushed); returns its final ``Endpoint``."""
    return _endpoint_backend(name, backend).undeploy(name)


def endpoints(backend: str | None = None) -> list:
    """Endpoints on ``backend`` (default: every backend this home deployed to, and local), newest first."""
    names = [backend] if backend else sorted({"local", *index.endpoint_backends()})
    found = [endpoint for name in names for endpoint in registry.get(name).endpoints()]
    return sorted(found, key=lambda e: e.created_at, reverse=True)


__all__ = ["Job", "JobHandle", "attach", "chat_request", "check", "deploy", "endpoints", "invoke", "jobs", "launch",
           "parse_state", "request", "resolve_model", "undeploy"]
