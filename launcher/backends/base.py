"""The backend protocol: one class per place jobs run (local, SageMaker, Vertex), registered by name.

``launcher.api`` builds one ``LaunchRequest`` from the validated spec and hands it to a backend; the
backend returns a ``JobRef``, the address of the job that every later call takes. A backend's methods
fall in two small groups: training (``check``, ``find``, ``submit``, ``status``, ``logs``, ``cancel``,
``list``, ``artifacts``) and serving (``deploy``, ``invoke``, ``undeploy``, ``endpoints``; arrives with
the serving work). Staging (copying data, bundling code) is each backend's own business inside
``submit``. Idempotency is not: ``api.launch`` looks the job up (``find``) before it submits, in one
place for every backend.

A backend states what it cannot do as data (``unsupported``: feature -> reason); the default ``check``
turns the features a spec needs into one clear error, instead of a bare NotImplementedError. Cloud SDKs
are imported inside the backend's own module (through ``launcher.clouds``), never here.
"""

from __future__ import annotations

import enum
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from launcher.errors import BackendError, NotFoundError, UnsupportedError

if TYPE_CHECKING:
    from launcher.spec import ComputeSpec, JobSpec, TrainConfig


class JobState(str, enum.Enum):
    """The one job-state enum every backend maps its native states onto.

    INTERRUPTED is at rest: the job stopped after a checkpoint (SIGTERM, a spot reclaim the platform
    does not retry) and resumes when it is submitted again. A restart the platform makes by itself
    (SageMaker managed spot, a Vertex worker restart) is RUNNING, with a message and the attempt count.
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    INTERRUPTED = "INTERRUPTED"
    STOPPING = "STOPPING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def active(self) -> bool:
        """Something is running or about to: submitting again re-attaches instead of launching."""
        return self in (JobState.PENDING, JobState.RUNNING, JobState.STOPPING)

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class Feature(str, enum.Enum):
    SPOT = "spot"
    MULTI_NODE = "multi-node training"
    GPU = "GPU training"
    FOLLOW_LOGS = "following logs"
    CANCEL = "cancelling jobs"
    DEPLOY = "deploying endpoints"
    STREAM = "streaming answers"


@dataclass(frozen=True)
class JobRef:
    """Where a job is: what ``submit`` returns and the index, ``JobHandle`` and ``attach`` keep."""

    backend: str
    job_id: str
    native_id: str = ""  # the platform's own name: a training job name / ARN, a CustomJob resource name
    location: dict[str, str] = field(default_factory=dict)  # region, project, ...
    attempt: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRef:
        return cls(backend=data["backend"], job_id=data["job_id"], native_id=data.get("native_id", ""),
                   location=dict(data.get("location") or {}), attempt=int(data.get("attempt", 1)))


@dataclass(frozen=True)
class EndpointSpec:
    """What ``deploy`` is asked for, beyond the model: the same on every backend; a backend's own settings
    (instance type, region, ...) go in ``options``. Secrets travel as names (``api_key_env``), never values."""

    name: str
    adapters: dict[str, str] = field(default_factory=dict)  # more adapters of the same base: name -> model dir
    port: int | None = None  # local: None picks a free port
    capture: str | None = None  # capture destination; None: the backend's default (local: the endpoint's folder)
    capture_percent: float = 100.0
    max_new_tokens_cap: int = 1024
    api_key_env: str = "LAUNCHER_API_KEY"  # the environment variable holding the API key, if one is set
    source: str = ""  # what the user named: a job id or a model dir (shown by 'launcher endpoints')
    model_uri: str = ""  # where the model already lies in a cloud store (a job's s3:// model.tar.gz, a gs:// model dir), if it does
    local_check: bool = True  # cloud backends: run the serving contract locally before creating anything
    options: dict[str, Any] = field(default_factory=dict)  # the backend's own settings (local: the server's options)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Endpoint:
    """A deployed model: what ``deploy`` returns and ``endpoints()`` lists."""

    name: str
    backend: str
    state: str  # Creating | InService | Failed | Stopped
    url: str = ""
    model: str = ""  # the model dir (or URI) served
    models: list[str] = field(default_factory=list)  # adapter names a request's "model" may take; the first is the default
    created_at: str = ""
    message: str = ""
    capture: str = ""  # where its capture records go
    auth: bool = False  # whether requests need the API key (the key itself is never recorded)
    reattached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class JobExists(Exception):
    """Raised by ``submit`` when the job it was asked to start is already there (another launch won a
    race, or a create the platform refused as a duplicate name): ``api.launch`` re-attaches to ``ref``."""

    def __init__(self, ref: JobRef):
        super().__init__(ref.job_id)
        self.ref = ref


@dataclass
class JobInfo:
    """What a backend knows about one job."""

    job_id: str
    backend: str
    state: JobState
    name: str = ""
    created_at: str = ""
    updated_at: str = ""
    message: str = ""  # the failure reason (one line), or what the job is doing
    output: str = ""  # where the model dir lands (local path, s3://, gs://)
    attempt: int = 1  # submissions so far (local, SageMaker: a resubmission is a new attempt)
    reattached: bool = False  # this submission found the job already there
    native_id: str = ""
    location: dict[str, str] = field(default_factory=dict)
    checkpoint_step: int | None = None  # the newest complete checkpoint's step, where the backend can see it
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> JobRef:
        return JobRef(self.backend, self.job_id, self.native_id, dict(self.location), self.attempt)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data


@dataclass(frozen=True)
class LaunchRequest:
    """Everything a backend needs to start one job, built once by ``api`` from the validated spec.

    The entrypoint receives ``config.wire()``: only the non-default settings and a schema version.
    Secrets travel as references (the NAME of an environment variable or a secret), never values.
    """

    job_id: str
    backend: str
    name: str
    run_name: str
    config: TrainConfig
    channels: dict[str, str]  # channel -> URI as the user gave it (a local path, s3://, gs://)
    compute: ComputeSpec
    device: str = "auto"  # local: auto | cpu | cuda; clouds: the accelerator kind
    processes_per_host: int = 1
    output_uri: str | None = None  # None: the backend's own place (local: the job folder)
    checkpoint_uri: str | None = None  # None: next to the output
    image: str | None = None  # a container image; None: the backend's default (or a source bundle)
    secrets: dict[str, str] = field(default_factory=dict)  # what the job reads -> reference (names only)
    tags: dict[str, str] = field(default_factory=dict)
    backend_options: dict[str, Any] = field(default_factory=dict)  # the spec's section for this backend
    attempt: int = 1
    identity: dict[str, Any] = field(default_factory=dict)  # what the job id hashes

    def torchrun(self, hosts: list[str], master_addr: str | None = None, master_port: int | str = 29500) -> dict[str, Any]:
        """What the entrypoint runs on each node when the job has several processes (``--dry-run``
        shows it): torchrun's arguments as ``entrypoints.platform.World`` derives them on the first node
        (the others differ in ``--node-rank``), or None for one process."""
        from entrypoints.platform import World

        if self.compute.nodes * self.processes_per_host == 1:
            return {"processes": 1, "command": None}
        world = World(node_rank=0, nodes=self.compute.nodes, hosts=tuple(hosts), master_addr=master_addr or hosts[0],
                      master_port=master_port)  # type: ignore[arg-type]  (a placeholder such as $MASTER_PORT for display)
        command = ["python", "-m", "torch.distributed.run", *world.torchrun_args(self.processes_per_host), "--module", "entrypoints.train"]
        return {"processes": self.compute.nodes * self.processes_per_host, "processes_per_node": self.processes_per_host,
                "command": " ".join(command) + " ...", "node_rank": "this node's place among the job's nodes (0 on the first)"}

    def staged_channels(self, scheme: str, data_uri: str) -> dict[str, str]:
        """channel -> the URI a cloud job reads it from: data already in the cloud's store (``scheme``,
        ``s3://`` or ``gs://``) where it is, a local dataset under ``data_uri/<content digest>/<channel>/``
        (its digest from the identity, so unchanged data has the same place and is uploaded once)."""
        digests = self.identity.get("data", {})
        return {channel: uri if uri.startswith(scheme) else f"{data_uri}/{digests.get(channel, 'local')[:16]}/{channel}/"
                for channel, uri in self.channels.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id, "backend": self.backend, "name": self.name, "run_name": self.run_name,
            "attempt": self.attempt, "settings": self.config.wire(), "channels": dict(self.channels),
            "compute": self.compute.model_dump(mode="json"), "device": self.device,
            "processes_per_host": self.processes_per_host, "output_uri": self.output_uri,
            "checkpoint_uri": self.checkpoint_uri, "image": self.image, "secrets": dict(self.secrets),
            "tags": dict(self.tags), "backend_options": dict(self.backend_options), "identity": self.identity,
        }


def followed(read: Callable[[], Iterator[str]], active: Callable[[], bool], follow: bool) -> Iterator[str]:
    """A cloud job's log lines: ``read()`` yields the lines not read yet (it keeps its own cursor); with
    ``follow``, read again, backing off from 0.5 s to 5 s while nothing comes, until ``active()`` is
    false, then read once more (what the job wrote last)."""
    delay = 0.5
    while True:
        done = not follow or not active()
        got = False
        for line in read():
            got = True
            yield line
        if done:
            return
        delay = 0.5 if got else min(5.0, delay * 2)
        time.sleep(delay)


class Backend(ABC):
    """A place training jobs run. Subclasses set ``name`` and, where needed, ``unsupported``."""

    name: ClassVar[str]
    unsupported: ClassVar[dict[Feature, str]] = {}

    def require(self, feature: Feature) -> None:
        """Raise one clear error when this backend lacks ``feature``."""
        reason = self.unsupported.get(feature)
        if reason is not None:
            fix = "" if "To fix" in reason else ". To fix: use a backend that supports it (--backend)"
            raise UnsupportedError(f"the '{self.name}' backend does not support {feature.value}: {reason}{fix}")

    # --- training --------------------------------------------------------------------------------
    def check(self, spec: JobSpec) -> list[str]:
        """Refuse what this backend cannot run, before anything is staged; return warnings to show.
        The default checks the features the spec needs against ``unsupported``."""
        if spec.compute.spot:
            self.require(Feature.SPOT)
        if spec.compute.nodes > 1:
            self.require(Feature.MULTI_NODE)
        if spec.compute.accelerator is not None:
            self.require(Feature.GPU)
        return []

    def check_gpus(self, gpus: int) -> None:
        """``--gpus``: only the local backend takes it (``api.request`` refuses it elsewhere)."""

    def configured(self) -> bool:
        """Whether this machine is set up to reach the backend (cheap, no network): ``attach`` asks only
        configured backends for a job its index lacks."""
        return True

    def describe(self, request: LaunchRequest) -> dict[str, Any]:
        """What ``submit`` would send for ``request`` (``launcher train --dry-run``); nothing is staged."""
        return request.to_dict()

    @abstractmethod
    def find(self, job_id: str) -> JobRef | None:
        """The job with this id, if this backend has it (the look-up before every create)."""

    @abstractmethod
    def submit(self, request: LaunchRequest) -> JobRef:
        """Stage the inputs and start attempt ``request.attempt`` of the job; ``JobExists`` when it is
        already there."""

    @abstractmethod
    def status(self, ref: JobRef) -> JobInfo:
        """The job's current state. Raise NotFoundError for an unknown job."""

    @abstractmethod
    def logs(self, ref: JobRef, follow: bool = False) -> Iterator[str]:
        """The job's log lines; with ``follow``, keep yielding until the job ends."""

    @abstractmethod
    def cancel(self, ref: JobRef) -> JobInfo:
        """Stop the job (it checkpoints first where it can)."""

    @abstractmethod
    def list(self, state: JobState | None = None) -> list[JobInfo]:
        """Jobs this backend knows, newest first."""

    def artifacts(self, ref: JobRef) -> Path:
        """The finished job's model dir as a local folder (downloaded and unpacked when remote)."""
        from launcher import artifacts

        info = self.status(ref)
        if not info.output:
            raise NotFoundError(f"job '{ref.job_id}' has no output location yet ({info.state.value}). To fix: wait until it has SUCCEEDED")
        return artifacts.model_dir(info.output)

    # --- serving -----------------------------------------------------------------------------------
    # A backend that serves overrides these four (and ``invoke_stream`` where it can stream); ``request``
    # is an OpenAI chat completion body ({"messages": [...], "max_tokens": ...}), which every backend's
    # serving container answers (SageMaker's /invocations takes "messages" too).
    def deploy(self, model: Path, spec: EndpointSpec) -> Endpoint:
        """Serve ``model`` (a local model dir) as endpoint ``spec.name``; an endpoint of that name that is
        alive and serves the same model is re-attached."""
        self.require(Feature.DEPLOY)
        raise UnsupportedError(f"the '{self.name}' backend does not deploy endpoints yet")

    def invoke(self, name: str, request: dict[str, Any]) -> dict[str, Any]:
        """One chat completion from endpoint ``name``: the OpenAI response object."""
        self.require(Feature.DEPLOY)
        raise UnsupportedError(f"the '{self.name}' backend does not invoke endpoints yet")

    def invoke_stream(self, name: str, request: dict[str, Any]) -> Iterator[str]:
        """The answer's text as it is generated."""
        self.require(Feature.STREAM)
        raise UnsupportedError(f"the '{self.name}' backend does not stream answers yet")

    def undeploy(self, name: str) -> Endpoint:
        """Stop endpoint ``name`` (its capture is flushed first)."""
        self.require(Feature.DEPLOY)
        raise UnsupportedError(f"the '{self.name}' backend does not deploy endpoints yet")

    def endpoints(self) -> list[Endpoint]:
        """This backend's endpoints, newest first (none where it cannot deploy)."""
        return []


def streamed_text(chunks: Iterable[bytes], name: str) -> Iterator[str]:
    """The answer's text from a serving container's server-sent events, however the transport cut them
    (an HTTP body line by line, SageMaker's PayloadParts, Vertex's HttpBody messages): OpenAI chunks
    (``choices[].delta.content`` or ``choices[].text``, up to ``data: [DONE]``) or TGI's token events. An
    error event mid-answer raises BackendError."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            event = json.loads(data)
            if "error" in event:
                raise BackendError(f"endpoint '{name}' failed mid-answer: {event['error']['message']}")
            token = event.get("token") or {}
            if token.get("text") and not token.get("special"):
                yield token["text"]
            for choice in event.get("choices", []):
                text = (choice.get("delta") or {}).get("content") or choice.get("text")
                if text:
                    yield text
