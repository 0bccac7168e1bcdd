"""The backend protocol: one class per place jobs run (local, SageMaker, Vertex), registered by name.

A backend's methods fall in two small groups: training (``stage``, ``submit``, ``status``, ``logs``,
``cancel``, ``list``) and serving (``deploy``, ``invoke``, ``undeploy``, ``endpoints``; arrives with the
serving work). A backend states what it cannot do as data (``unsupported``: feature -> reason) and
``require`` turns that into one clear error, instead of a bare NotImplementedError. Cloud SDKs are
imported inside the backend's own module, never here.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from launcher.errors import UnsupportedError

if TYPE_CHECKING:
    from launcher.spec import JobSpec


class JobState(str, enum.Enum):
    """The one job-state enum every backend maps its native states onto."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    INTERRUPTED = "INTERRUPTED"  # spot interruption or SIGTERM: checkpointed, will resume / can be resumed
    STOPPING = "STOPPING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

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


@dataclass
class JobInfo:
    """What a backend knows about one job."""

    job_id: str
    backend: str
    state: JobState
    name: str = ""
    created_at: str = ""
    updated_at: str = ""
    message: str = ""  # the failure reason, or what the job is doing
    output: str = ""  # where the model dir lands (local path, s3://, gs://)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data


class Backend(ABC):
    """A place training jobs run. Subclasses set ``name`` and, where needed, ``unsupported``."""

    name: ClassVar[str]
    unsupported: ClassVar[dict[Feature, str]] = {}

    def require(self, feature: Feature) -> None:
        """Raise one clear error when this backend lacks ``feature``."""
        reason = self.unsupported.get(feature)
        if reason is not None:
            raise UnsupportedError(f"the '{self.name}' backend does not support {feature.value}: {reason}")

    # --- training --------------------------------------------------------------------------------
    @abstractmethod
    def stage(self, spec: JobSpec, job_id: str) -> dict[str, str]:
        """Put the job's inputs where the job can read them; return channel -> staged URI."""

    @abstractmethod
    def submit(self, spec: JobSpec, run_name: str = "run1") -> JobInfo:
        """Start the job, or re-attach when the job with this spec and run name already exists."""

    @abstractmethod
    def status(self, job_id: str) -> JobInfo:
        """The job's current state. Raise NotFoundError for an unknown id."""

    @abstractmethod
    def logs(self, job_id: str, follow: bool = False) -> Iterator[str]:
        """The job's log lines; with ``follow``, keep yielding until the job ends."""

    @abstractmethod
    def cancel(self, job_id: str) -> JobInfo:
        """Stop the job (it checkpoints first where it can)."""

    @abstractmethod
    def list(self, state: JobState | None = None) -> list[JobInfo]:
        """Jobs this backend knows, newest first."""

    def metrics(self, job_id: str) -> dict[str, Any]:
        """The finished job's ``metrics.json``."""
        raise UnsupportedError(f"the '{self.name}' backend cannot fetch metrics yet")
