"""Vertex AI CustomJobs that really run, and the Cloud Logging they write, on one plaintext gRPC port.

Google ships no emulator of Vertex AI or Cloud Logging, and no gRPC servicer stubs for either.
``VertexFake`` learns each service's methods from the client library itself (every
``<Service>GrpcTransport`` property is a stub naming the method's path and its proto-plus request
and response classes) and serves them through ``grpc.method_handlers_generic_handler``
(tests/fakes/grpc_learnt.py), so the real ``aiplatform_v1.JobServiceClient`` and ``logging_v2``
``LoggingServiceV2Client`` talk to it unchanged (``VERTEX_EMULATOR_HOST`` / ``LOGGING_EMULATOR_HOST``
in ``launcher.clouds``). Long-running operations go through ``google.longrunning``'s generated ``OperationsServicer``.

* **JobService.CreateCustomJob** checks the parent (``projects/P/locations/L``), a display name, one
  worker pool with ``replica_count`` 1 holding a ``python_package_spec`` or a ``container_spec``
  with a ``command``, and the quotas a test set (``refuse_quota``: RESOURCE_EXHAUSTED, "The following
  quota metrics exceed quota limits: aiplatform.googleapis.com/custom_model_training_nvidia_l4_gpus",
  the wording of real refusals quoted in vertex-ai-samples #700 / #3479 and stable-diffusion-on-gcp
  #12). The job is named ``projects/P/locations/L/customJobs/<19-digit id>``, JOB_STATE_PENDING, with
  ``create_time``/``update_time``; a runner thread starts it.
* **GetCustomJob**, **ListCustomJobs** (newest first, the fake's choice; ``filter``: terms
  ``labels.K="V"``, ``labels.K=V``, ``labels.K:*``, ``state=JOB_STATE_X``, ``state!=...``,
  ``display_name="..."`` joined by ``AND``, anything else INVALID_ARGUMENT naming the term;
  ``page_size`` (default 100) / ``page_token``), **CancelCustomJob** (Empty; JOB_STATE_CANCELLING,
  SIGTERM to the process group, SIGKILL after ``grace_s``, then JOB_STATE_CANCELLED with ``error``
  code 1 CANCELLED, as the API reference documents; a finished job: FAILED_PRECONDITION),
  **DeleteCustomJob** (an Operation, done at once, ``DeleteOperationMetadata``; a job that has not
  finished: FAILED_PRECONDITION). Other JobService, Locations and IAM methods: UNIMPLEMENTED naming
  this file. Operations: Get, List and Wait (the rest UNIMPLEMENTED, the generated base's answer).
* **The runner** stands in for the replica workerpool0-0. A per-job mirror folder stands in for
  Cloud Storage FUSE (``/gcs`` on Vertex): before the program starts, every object under the
  ``gs://`` URIs found in the pool's env values and args and under ``base_output_directory`` is
  downloaded from Cloud Storage (google-cloud-storage, the emulator this process's
  ``STORAGE_EMULATOR_HOST`` names) to ``<mirror>/<bucket>/<key>``; the program runs with
  ``LAUNCHER_GCS_MOUNT=<mirror>``; every file in the mirror that is new or changed is uploaded every
  ``sync_interval_s`` and once the program has exited (FUSE writes through; nothing is ever deleted
  in GCS, and a file caught mid-write goes up as it is then and again once it changes).
  The environment is this process's (the "image": Python, PYTHONPATH, STORAGE_EMULATOR_HOST),
  ``PYTHONUNBUFFERED=1``, then what Vertex sets: ``AIP_MODEL_DIR=<base>/model/``,
  ``AIP_CHECKPOINT_DIR=<base>/checkpoints/``, ``AIP_TENSORBOARD_LOG_DIR=<base>/logs/`` (only with a
  base_output_directory, as documented), ``CLOUD_ML_JOB_ID`` (the numeric id),
  ``CLOUD_ML_PROJECT_ID`` and ``CLOUD_ML_REGION`` (seen read by Vertex training code in samples; the
  fake gives the project id as the job names it), ``CLUSTER_SPEC`` ({"cluster": {"workerpool0":
  ["127.0.0.1:PORT"]}, "environment": "cloud", "task": {"type": "workerpool0", "index": 0}, "job":
  <the CustomJobSpec as JSON>}, the documented shape; the host is local here) and ``TF_CONFIG`` (the
  same with "chief"), then the pool's ``env``.
  ``python_package_spec``: the one ``package_uris`` archive is downloaded and installed with
  ``pip install --no-index --no-deps --no-build-isolation --target <dir>`` by this interpreter (no
  network: the package's dependencies must already be installed here, as on a prebuilt image
  without network; a failed install fails the job with pip's output in the log), then
  ``python -m <python_module> <args>`` runs with ``<dir>`` first on PYTHONPATH. ``executor_image_uri``
  is recorded, never pulled. ``container_spec``: ``command + args`` run in this interpreter's
  environment (``image_uri`` recorded, never pulled; no command: INVALID_ARGUMENT, the fake cannot
  run an image's default entrypoint). Each attempt runs in a fresh temporary cwd, in its own process
  group. JOB_STATE_RUNNING (``start_time``) when the program starts; exit 0: SUCCEEDED; otherwise
  FAILED with ``error`` code 3 and "The replica workerpool0-0 exited with a non-zero status of N.
  Termination reason: Error. " plus the last stderr lines (Vertex's wording, quoted in
  vertex-ai-samples #1898 and #1504; a signal's death is status 128+N); ``end_time`` on any end.
  ``scheduling.timeout`` is enforced: SIGTERM, then FAILED with code 4 (DEADLINE_EXCEEDED) and the
  fake's own words. ``restart_job_on_worker_restart`` and ``strategy`` are recorded only.
* **Cloud Logging.ListLogEntries**: each non-empty line of the program's stdout (severity INFO) and
  stderr (severity ERROR: what Vertex is widely reported to do, which is why Python's logging, on
  stderr, shows as errors there) is a LogEntry: ``log_name`` ``projects/P/logs/workerpool0-0``,
  ``resource`` {type ``ml_job``, labels ``job_id``, ``project_id``, ``task_name`` ``workerpool0-0``},
  ``text_payload``, ``timestamp`` (whole microseconds, strictly increasing, so a cursor taken from
  one entry is exact) and ``insert_id`` (increasing). ``resource_names`` (``projects/P``) is
  required and honoured; ``filter``: terms ``resource.type=``, ``resource.labels.K=``, ``logName=``,
  ``timestamp`` with ``= > >= < <=`` (RFC 3339), ``severity`` with the same, joined by ``AND``;
  anything else INVALID_ARGUMENT naming the term. ``order_by`` ``timestamp asc`` (default) or
  ``timestamp desc``; ``page_size`` (default 50, at most 1000) and ``page_token``.

Online prediction (ModelService, EndpointService, PredictionService, with endpoints whose container
is the real serving entrypoint run here) is ``ServingServices`` in tests/fakes/vertex_serving.py, served
on the same port; ``serving.calls`` lists its creates, deploys and deletes.

Control API for tests: ``requests``, ``jobs``, ``job``, ``wait``, ``refuse_quota``, ``fail_next``,
``restart_worker``, ``restarts``, ``faults`` (+ ``injected``), ``mirror``, ``pids``.
``restart_worker`` stands in for a worker VM restarting (maintenance, a spot preemption): SIGTERM,
SIGKILL after ``grace_s``, a final sync, and the same command again in the same mirror (the program
finds what was synced), the job RUNNING throughout. The CustomJob resource exposes no restart count
(no such field in v1 and no JobState for it), so the fake keeps it in ``restarts(name)`` only; the
installed package is reused, not reinstalled.

Not emulated: more than one worker pool or replica, reservations, persistent resources, TPUs and the
machine type's hardware (the program runs here), service accounts and IAM, VPC, web access, the
Vertex service's own log lines (provisioning, "Job completed successfully"), QUEUED, retries of a
failed replica, ``max_wait_duration``, PAUSED/EXPIRED, HyperparameterTuningJobs and every other job
kind. Signals go to the whole process group (on a Vertex image the container's PID 1 may not
forward them). ``CLOUD_ML_PROJECT_ID`` may be the project number on Vertex, not verified here. The
wording of NOT_FOUND, FAILED_PRECONDITION, the timeout, ``fail_next`` and the cancellation message
is the fake's own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import itertools
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.api import monitored_resource_pb2
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform_v1
from google.cloud.aiplatform_v1.services.endpoint_service.transports import EndpointServiceGrpcTransport
from google.cloud.aiplatform_v1.services.job_service.transports import JobServiceGrpcTransport
from google.cloud.aiplatform_v1.services.model_service.transports import ModelServiceGrpcTransport
from google.cloud.aiplatform_v1.services.prediction_service.transports import PredictionServiceGrpcTransport
from google.cloud.logging_v2.services.logging_service_v2.transports import LoggingServiceV2GrpcTransport
from google.cloud.logging_v2.types import ListLogEntriesRequest, ListLogEntriesResponse, LogEntry
from google.logging.type import log_severity_pb2
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import empty_pb2, json_format, timestamp_pb2
from google.rpc import status_pb2

from fakes.grpc_learnt import generic_handlers
from fakes.vertex_serving import ServingServices

JobState = aiplatform_v1.JobState
TASK = "workerpool0-0"
LIVE = (JobState.JOB_STATE_PENDING, JobState.JOB_STATE_QUEUED, JobState.JOB_STATE_RUNNING, JobState.JOB_STATE_CANCELLING)
QUOTA_MESSAGE = "The following quota metrics exceed quota limits: aiplatform.googleapis.com/{metric}"
REPLICA_FAILED = "The replica workerpool0-0 exited with a non-zero status of {code}. Termination reason: Error. "
GPU_METRICS = {"NVIDIA_TESLA_A100": "nvidia_a100", "NVIDIA_A100_80GB": "nvidia_a100_80gb", "NVIDIA_TESLA_T4": "nvidia_t4",
               "NVIDIA_TESLA_V100": "nvidia_v100", "NVIDIA_TESLA_K80": "nvidia_k80", "NVIDIA_L4": "nvidia_l4",
               "NVIDIA_H100_80GB": "nvidia_h100", "NVIDIA_H100_MEGA_80GB": "nvidia_h100_mega", "NVIDIA_H200_141GB": "nvidia_h200"}
SEVERITIES = dict(log_severity_pb2.LogSeverity.items())
ME = "the Vertex AI fake (tests/fakes/vertex.py)"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _parse_filter(text: str, known: str) -> list[tuple[str, str, str]]:
    """``a="b" AND c>=d`` -> [(a, op, b), ...]; an unknown term raises ValueError naming it."""
    terms = []
    for term in (t.strip() for t in re.split(r"\s+AND\s+", text.strip()) if t.strip()):
        match = re.fullmatch(rf"({known})\s*(!=|>=|<=|=|>|<|:)\s*(\"[^\"]*\"|[^\s\"()]+)", term)
        if match is None:
            raise ValueError(term)
        terms.append((match[1], match[2], match[3].strip('"')))
    return terms


def _compare(left: Any, op: str, right: Any) -> bool:
    return {"=": left == right, "!=": left != right, ">": left > right, ">=": left >= right,
            "<": left < right, "<=": left <= right}[op]


@dataclass
class _Job:
    message: aiplatform_v1.CustomJob
    location: str
    job_id: str
    folder: Path
    thread: threading.Thread | None = None
    process: subprocess.Popen | None = None
    cancel_requested: bool = False
    restart_requested: bool = False
    timed_out: bool = False
    signalled_at: float | None = None
    restarts: int = 0
    pids: list[int] = field(default_factory=list)
    fail_with: tuple[int, str] | None = None


@dataclass(frozen=True)
class _Line:
    seq: int
    project: str
    job_id: str
    micros: int  # since the epoch
    severity: int
    text: str


class _Faults(grpc.ServerInterceptor):
    """Fails a random share of calls with one of ``codes``; half of them after the call had its effect."""

    def __init__(self):
        self.rate, self.codes, self.rng, self.methods = 0.0, (), random.Random(0), None
        self.injected: list[tuple[str, str, bool]] = []
        self.lock = threading.Lock()

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        method = details.method.rsplit("/", 1)[-1]
        if handler is None or not handler.unary_unary or self.rate <= 0 or (self.methods and method not in self.methods):
            return handler
        with self.lock:
            if self.rng.random() >= self.rate:
                return handler
            code, after = self.rng.choice(self.codes), self.rng.random() < 0.5
            self.injected.append((method, code.name, after))
        inner = handler.unary_unary

        def failing(request, context):
            if after:
                inner(request, context)  # the effect happens; the answer is lost
            text = "The service is currently unavailable." if code == grpc.StatusCode.UNAVAILABLE else "Deadline Exceeded"
            context.abort(code, text)

        return handler._replace(unary_unary=failing)


class _Operations(operations_pb2_grpc.OperationsServicer):
    """google.longrunning.Operations over the fake's finished operations."""

    def __init__(self, operations: dict[str, operations_pb2.Operation]):
        self.operations = operations

    def GetOperation(self, request, context):  # noqa: N802 - gRPC's method names
        if request.name not in self.operations:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Operation {request.name} does not exist.")
        return self.operations[request.name]

    def WaitOperation(self, request, context):  # noqa: N802
        return self.GetOperation(request, context)

    def ListOperations(self, request, context):  # noqa: N802
        ops = [op for name, op in self.operations.items() if name.startswith(request.name.rstrip("/") + "/")]
        return operations_pb2.ListOperationsResponse(operations=ops)


class VertexFake(ServingServices):
    """Vertex AI's JobService and Cloud Logging on one port, with CustomJobs that run (module docstring);
    ModelService, EndpointService and PredictionService with endpoints that serve (tests/fakes/vertex_serving.py)."""

    def __init__(self, *, workdir: str | Path | None = None, sync_interval_s: float = 0.5,
                 project: str = "test-project", grace_s: float = 30.0):
        self._own_workdir = None if workdir else tempfile.TemporaryDirectory(prefix="vertex-fake-")
        self.workdir = Path(workdir or self._own_workdir.name)
        self.sync_interval_s, self.project, self.grace_s = sync_interval_s, project, grace_s
        self.requests: list[aiplatform_v1.CreateCustomJobRequest] = []
        self._jobs: dict[str, _Job] = {}
        self._lines: list[_Line] = []
        self._operations: dict[str, operations_pb2.Operation] = {}
        self._quotas: dict[tuple[str, bool], tuple[int, bool]] = {}
        self._fail_next: list[tuple[int, str]] = []
        self._ids = itertools.count(random.Random().randrange(10**18, 2 * 10**18))
        self._seq = itertools.count(1)
        self._last_micros = 0
        self._lock = threading.RLock()
        self._faults = _Faults()
        self._server: grpc.Server | None = None
        self.address = ""
        self._serving_init()

    # --- serving ----------------------------------------------------------------------------------
    def start(self, port: int = 0) -> str:
        """Serve on 127.0.0.1:``port`` (0: a free one); returns ``host:port``."""
        from concurrent import futures

        implemented: dict[str, Callable] = {
            "/google.cloud.aiplatform.v1.JobService/CreateCustomJob": self._create,
            "/google.cloud.aiplatform.v1.JobService/GetCustomJob": self._get,
            "/google.cloud.aiplatform.v1.JobService/ListCustomJobs": self._list,
            "/google.cloud.aiplatform.v1.JobService/CancelCustomJob": self._cancel,
            "/google.cloud.aiplatform.v1.JobService/DeleteCustomJob": self._delete,
            "/google.logging.v2.LoggingServiceV2/ListLogEntries": self._list_log_entries,
            **self._serving_handlers(),
        }
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), interceptors=[self._faults])
        transports = (JobServiceGrpcTransport, LoggingServiceV2GrpcTransport, ModelServiceGrpcTransport,
                      EndpointServiceGrpcTransport, PredictionServiceGrpcTransport)
        # google.longrunning.Operations: the generated servicer below
        self._server.add_generic_rpc_handlers(generic_handlers(transports, implemented, ME, skip=("google.longrunning.Operations",)))
        operations_pb2_grpc.add_OperationsServicer_to_server(_Operations(self._operations), self._server)
        bound = self._server.add_insecure_port(f"127.0.0.1:{port}")
        self._server.start()
        self.address = f"127.0.0.1:{bound}"
        return self.address

    def close(self) -> None:
        """Kill every job's process group, wait for the runners, stop serving."""
        self._faults.rate = 0
        for job in list(self._jobs.values()):
            job.cancel_requested = True
            self._kill(job, signal.SIGKILL)
        for job in list(self._jobs.values()):
            if job.thread is not None:
                job.thread.join(15)
        self._serving_close()
        if self._server is not None:
            self._server.stop(None)
        if self._own_workdir is not None:
            self._own_workdir.cleanup()

    def __enter__(self) -> VertexFake:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the control API ----------------------------------------------------------------------------
    def jobs(self) -> list[aiplatform_v1.CustomJob]:
        """Copies of every job, oldest first."""
        with self._lock:
            return [self._copy(job) for job in self._jobs.values()]

    def job(self, name: str) -> aiplatform_v1.CustomJob:
        with self._lock:
            return self._copy(self._jobs[name])

    def wait(self, name: str, timeout: float = 60.0) -> str:
        """Block until the job's runner is done; the JobState's name. TimeoutError after ``timeout``."""
        job = self._jobs[name]
        job.thread.join(timeout)
        if job.thread.is_alive():
            raise TimeoutError(f"CustomJob {name} still {job.message.state.name} after {timeout:.0f} s")
        return job.message.state.name

    def refuse_quota(self, resource: str, *, limit: int = 0, spot: bool = False, at_create: bool = True) -> None:
        """Give ``resource`` (an AcceleratorType name such as NVIDIA_L4, counted in accelerators, or a
        machine type, counted in vCPUs: its trailing number, n1-standard-8 -> 8, else 1) a quota of
        ``limit`` over the live jobs (SPOT ones with ``spot=True``). A create going past it answers
        RESOURCE_EXHAUSTED, or with ``at_create=False`` is created and then FAILED with code 8 and
        the same message (both are seen on Vertex)."""
        self._quotas[(resource, spot)] = (limit, at_create)

    def fail_next(self, message: str, *, code: int = 13) -> None:
        """The next created job FAILS before its program starts, with ``error`` {code, message}
        (e.g. a stockout: code 8, "Resources are insufficient in region: ...")."""
        self._fail_next.append((code, message))

    def restart_worker(self, name: str) -> None:
        """Restart the job's running replica (module docstring); returns once it is signalled."""
        job = self._jobs[name]
        with self._lock:
            if job.process is None or job.message.state != JobState.JOB_STATE_RUNNING:
                raise ValueError(f"CustomJob {name} has no running replica (state {job.message.state.name})")
            job.restart_requested = True
            self._signal(job)

    def restarts(self, name: str) -> int:
        """How many times the job's replica was restarted (Vertex's CustomJob shows no such count)."""
        return self._jobs[name].restarts

    def faults(self, rate: float = 0.3, codes: Iterable[grpc.StatusCode] = (grpc.StatusCode.UNAVAILABLE,
               grpc.StatusCode.DEADLINE_EXCEEDED), seed: int = 0, methods: Iterable[str] | None = None) -> None:
        """Fail ``rate`` of the calls (of ``methods``, e.g. {"CreateCustomJob"}; default all) with one
        of ``codes``; half of those fail after the call took effect (a create's lost response).
        ``rate=0`` turns it off; ``injected`` lists (method, code, after) of each failure."""
        with self._faults.lock:
            self._faults.rate, self._faults.codes = rate, tuple(codes)
            self._faults.rng, self._faults.methods = random.Random(seed), set(methods) if methods else None

    @property
    def injected(self) -> list[tuple[str, str, bool]]:
        return list(self._faults.injected)

    def mirror(self, name: str) -> Path:
        """The job's stand-in for the /gcs mount (``<mirror>/<bucket>/<key>``)."""
        return self._jobs[name].folder / "gcs"

    def pids(self, name: str) -> list[int]:
        """The process (group) id of each attempt, oldest first."""
        return list(self._jobs[name].pids)

    # --- JobService ---------------------------------------------------------------------------------
    def _copy(self, job: _Job) -> aiplatform_v1.CustomJob:
        return aiplatform_v1.CustomJob.deserialize(aiplatform_v1.CustomJob.serialize(job.message))

    def _find(self, name: str, context) -> _Job:
        job = self._jobs.get(name)
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"The CustomJob {name} does not exist.")
        return job

    def _create(self, request: aiplatform_v1.CreateCustomJobRequest, context) -> aiplatform_v1.CustomJob:
        self.requests.append(request)
        match = re.fullmatch(r"projects/([^/]+)/locations/([^/]+)", request.parent)
        invalid = lambda text: context.abort(grpc.StatusCode.INVALID_ARGUMENT, text)  # noqa: E731
        if match is None:
            invalid(f"Invalid parent {request.parent!r}: expected projects/PROJECT/locations/LOCATION.")
        spec = request.custom_job.job_spec
        if not request.custom_job.display_name:
            invalid("display_name must be set.")
        pools = [p for p in spec.worker_pool_specs if aiplatform_v1.WorkerPoolSpec.pb(p).ByteSize()]
        if len(pools) != 1 or pools[0].replica_count != 1:
            invalid(f"{ME} runs one worker pool of one replica; got {len(pools)} pools")
        pool = pools[0]
        if "python_package_spec" in pool:
            if len(pool.python_package_spec.package_uris) != 1 or not pool.python_package_spec.python_module:
                invalid(f"{ME} installs exactly one package_uris archive and needs a python_module")
        elif "container_spec" in pool:
            if not pool.container_spec.command:
                invalid(f"{ME} cannot run an image's default entrypoint: set container_spec.command")
        else:
            invalid("A worker pool needs a container_spec or a python_package_spec.")
        spot = spec.scheduling.strategy == aiplatform_v1.Scheduling.Strategy.SPOT
        with self._lock:
            refusal = self._over_quota(pool.machine_spec, spot)
            if refusal and refusal[1]:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, QUOTA_MESSAGE.format(metric=refusal[0]))
            job_id = str(next(self._ids))
            name = f"projects/{match[1]}/locations/{match[2]}/customJobs/{job_id}"
            message = aiplatform_v1.CustomJob.deserialize(aiplatform_v1.CustomJob.serialize(request.custom_job))
            now = _now()
            message.name, message.state, message.create_time, message.update_time = name, JobState.JOB_STATE_PENDING, now, now
            job = _Job(message=message, location=match[2], job_id=job_id, folder=self.workdir / job_id)
            if refusal:
                job.fail_with = (8, QUOTA_MESSAGE.format(metric=refusal[0]))
            elif self._fail_next:
                job.fail_with = self._fail_next.pop(0)
            self._jobs[name] = job
            job.thread = threading.Thread(target=self._run, args=(job, pool), name=f"vertex-job-{job_id}", daemon=True)
            job.thread.start()
            return self._copy(job)

    def _over_quota(self, machine: aiplatform_v1.MachineSpec, spot: bool) -> tuple[str, bool] | None:
        """(metric, at_create) if the request goes past a quota a test set."""
        accelerator = machine.accelerator_type.name
        for (resource, quota_spot), (limit, at_create) in self._quotas.items():
            if quota_spot != spot or resource not in (accelerator, machine.machine_type):
                continue
            def amount(m: aiplatform_v1.MachineSpec) -> int:
                if resource == accelerator:
                    return m.accelerator_count if m.accelerator_type.name == resource else 0
                cpus = re.search(r"-(\d+)$", m.machine_type)
                return (int(cpus[1]) if cpus else 1) if m.machine_type == resource else 0
            used = sum(amount(p.machine_spec) for j in self._jobs.values() if j.message.state in LIVE
                       and (j.message.job_spec.scheduling.strategy == aiplatform_v1.Scheduling.Strategy.SPOT) == spot
                       for p in j.message.job_spec.worker_pool_specs)
            if used + amount(machine) > limit:
                kind = GPU_METRICS.get(resource, resource.lower().removeprefix("nvidia_tesla_")) + "_gpus" \
                    if resource == accelerator else "cpus"
                if resource.startswith("TPU_"):
                    kind = resource.lower()
                return f"custom_model_training_{'preemptible_' if spot else ''}{kind}", at_create
        return None

    def _get(self, request, context) -> aiplatform_v1.CustomJob:
        with self._lock:
            return self._copy(self._find(request.name, context))

    def _list(self, request, context) -> aiplatform_v1.ListCustomJobsResponse:
        known = r"labels\.[\w.-]+|state|display_name"
        try:
            terms = _parse_filter(request.filter, known)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f'{ME} does not understand the filter term {exc.args[0]!r}; it knows '
                          'labels.KEY="VALUE", labels.KEY:*, state=JOB_STATE_..., display_name="..." joined by AND')
        with self._lock:
            found = [self._copy(j) for j in reversed(self._jobs.values())
                     if j.message.name.startswith(request.parent + "/customJobs/") and all(self._matches(j.message, t) for t in terms)]
        start = int(request.page_token or 0)
        size = request.page_size if request.page_size > 0 else 100
        more = start + size < len(found)
        return aiplatform_v1.ListCustomJobsResponse(custom_jobs=found[start:start + size],
                                                    next_page_token=str(start + size) if more else "")

    @staticmethod
    def _matches(job: aiplatform_v1.CustomJob, term: tuple[str, str, str]) -> bool:
        key, op, value = term
        if key.startswith("labels."):
            label = job.labels.get(key.removeprefix("labels."))
            return label is not None if op == ":" else _compare(label, op, value) if op in ("=", "!=") else False
        actual = job.state.name if key == "state" else job.display_name
        return _compare(actual, op, value) if op in ("=", "!=") else False

    def _cancel(self, request, context) -> empty_pb2.Empty:
        with self._lock:
            job = self._find(request.name, context)
            if job.message.state not in LIVE:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"Cannot cancel CustomJob {request.name}: it is in state {job.message.state.name}.")
            if not job.cancel_requested:
                job.cancel_requested = True
                self._set(job, JobState.JOB_STATE_CANCELLING)
                self._signal(job)
        return empty_pb2.Empty()

    def _delete(self, request, context) -> operations_pb2.Operation:
        with self._lock:
            job = self._find(request.name, context)
            if job.message.state in LIVE:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"Cannot delete CustomJob {request.name}: it is in "
                              f"state {job.message.state.name}. Cancel it first.")
            del self._jobs[request.name]
            now = _now()
            metadata = aiplatform_v1.DeleteOperationMetadata(generic_metadata={"create_time": now, "update_time": now})
            operation = operations_pb2.Operation(
                name=f"projects/{request.name.split('/')[1]}/locations/{job.location}/operations/{next(self._ids)}", done=True)
            operation.metadata.Pack(aiplatform_v1.DeleteOperationMetadata.pb(metadata))
            operation.response.Pack(empty_pb2.Empty())
            self._operations[operation.name] = operation
            return operation

    def _set(self, job: _Job, state: JobState, *, error: tuple[int, str] | None = None) -> None:
        with self._lock:
            now = _now()
            job.message.state, job.message.update_time = state, now
            if state == JobState.JOB_STATE_RUNNING and "start_time" not in job.message:
                job.message.start_time = now
            if state not in LIVE:
                job.message.end_time = now
            if error:
                job.message.error = status_pb2.Status(code=error[0], message=error[1])

    # --- Cloud Logging ------------------------------------------------------------------------------
    def _log(self, job: _Job, severity: int, text: str) -> None:
        with self._lock:
            micros = max(time.time_ns() // 1000, self._last_micros + 1)
            self._last_micros = micros
            project = job.message.name.split("/")[1]
            self._lines.append(_Line(next(self._seq), project, job.job_id, micros, severity, text))

    def _list_log_entries(self, request: ListLogEntriesRequest, context) -> ListLogEntriesResponse:
        invalid = lambda text: context.abort(grpc.StatusCode.INVALID_ARGUMENT, text)  # noqa: E731
        projects = {r.removeprefix("projects/") for r in request.resource_names if r.startswith("projects/")}
        if not projects or len(projects) != len(request.resource_names):
            invalid(f"{ME} needs resource_names of the form projects/PROJECT; got {list(request.resource_names)}")
        try:
            terms = _parse_filter(request.filter, r"resource\.type|resource\.labels\.\w+|logName|log_name|timestamp|severity")
        except ValueError as exc:
            invalid(f"{ME} does not understand the filter term {exc.args[0]!r}; it knows resource.type=, resource.labels.KEY=, "
                    "logName=, timestamp and severity comparisons, joined by AND")
        checks = []
        for key, op, value in terms:
            if key == "timestamp":
                stamp = timestamp_pb2.Timestamp()
                try:
                    stamp.FromJsonString(value)
                except ValueError:
                    invalid(f"Unparseable timestamp {value!r} in filter")
                checks.append((lambda line, op=op, t=(stamp.seconds, stamp.nanos): _compare(
                    (line.micros // 10**6, line.micros % 10**6 * 1000), op, t)))
            elif key == "severity":
                if value.upper() not in SEVERITIES:
                    invalid(f"Unknown severity {value!r} in filter")
                checks.append(lambda line, op=op, s=SEVERITIES[value.upper()]: _compare(line.severity, op, s))
            elif op not in ("=", "!="):
                invalid(f"{ME} compares {key} only with = or !=")
            else:
                checks.append(lambda line, key=key, op=op, value=value: _compare(self._field(line, key), op, value))
        order = request.order_by.strip().lower() or "timestamp asc"
        if order not in ("timestamp asc", "timestamp desc"):
            invalid(f"{ME} orders by 'timestamp asc' or 'timestamp desc' only; got {request.order_by!r}")
        with self._lock:
            lines = [line for line in self._lines if line.project in projects and all(c(line) for c in checks)]
        if order.endswith("desc"):
            lines.reverse()
        if request.page_token:
            if not request.page_token.isdigit():
                invalid(f"Invalid page_token {request.page_token!r}")
            after = int(request.page_token)
            lines = [line for line in lines if (line.seq < after if order.endswith("desc") else line.seq > after)]
        size = min(request.page_size if request.page_size > 0 else 50, 1000)
        page = lines[:size]
        response = ListLogEntriesResponse(next_page_token=str(page[-1].seq) if len(lines) > size else "")
        response.entries.extend(self._entry(line) for line in page)
        return response

    @staticmethod
    def _field(line: _Line, key: str) -> str:
        return {"resource.type": "ml_job", "resource.labels.job_id": line.job_id, "resource.labels.project_id": line.project,
                "resource.labels.task_name": TASK, "logName": f"projects/{line.project}/logs/{TASK}",
                "log_name": f"projects/{line.project}/logs/{TASK}"}.get(key, "")

    @staticmethod
    def _entry(line: _Line) -> LogEntry:
        stamp = timestamp_pb2.Timestamp(seconds=line.micros // 10**6, nanos=line.micros % 10**6 * 1000)
        resource = monitored_resource_pb2.MonitoredResource(
            type="ml_job", labels={"job_id": line.job_id, "project_id": line.project, "task_name": TASK})
        return LogEntry(log_name=f"projects/{line.project}/logs/{TASK}", resource=resource, text_payload=line.text,
                        timestamp=stamp, receive_timestamp=stamp, severity=line.severity, insert_id=f"{line.seq:016d}")

    # --- the runner ---------------------------------------------------------------------------------
    def _signal(self, job: _Job) -> None:
        with self._lock:
            if job.process is not None:  # not started yet: the runner checks the flags before it starts one
                job.signalled_at = time.monotonic()
                self._kill(job, signal.SIGTERM)

    @staticmethod
    def _kill(job: _Job, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError, AttributeError):
            os.killpg(job.process.pid, sig)

    def _run(self, job: _Job, pool: aiplatform_v1.WorkerPoolSpec) -> None:
        try:
            if job.fail_with:
                return self._set(job, JobState.JOB_STATE_FAILED, error=job.fail_with)
            mirror = _Mirror(self.project, job.folder / "gcs")
            spec = pool.python_package_spec if "python_package_spec" in pool else pool.container_spec
            env_list = {e.name: e.value for e in spec.env}
            base = job.message.job_spec.base_output_directory.output_uri_prefix
            for uri in [*env_list.values(), *spec.args, *([base] if base else [])]:
                if uri.startswith("gs://"):
                    mirror.download(uri)
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **self._platform_env(job, base), **env_list,
                   "LAUNCHER_GCS_MOUNT": str(mirror.root)}
            if "python_package_spec" in pool:
                command = self._install(job, mirror, spec, env)
                if command is None:
                    return
            else:
                command = [*spec.command, *spec.args]
            timeout = job.message.job_spec.scheduling.timeout.total_seconds() if "timeout" in job.message.job_spec.scheduling else 0
            started = time.monotonic()
            while True:
                code, stderr_tail = self._attempt(job, command, env, mirror, started, timeout)
                if job.restart_requested and not job.cancel_requested and not job.timed_out:
                    job.restart_requested = False
                    job.restarts += 1
                    continue
                break
            if job.cancel_requested:
                self._set(job, JobState.JOB_STATE_CANCELLED, error=(1, "CustomJob was cancelled."))
            elif job.timed_out:
                self._set(job, JobState.JOB_STATE_FAILED, error=(4, f"The job ran longer than its scheduling.timeout of "
                                                                    f"{timeout:g} seconds and was stopped."))
            elif code == 0:
                self._set(job, JobState.JOB_STATE_SUCCEEDED)
            else:
                status = code if code > 0 else 128 - code
                self._set(job, JobState.JOB_STATE_FAILED, error=(3, REPLICA_FAILED.format(code=status) + "\n" + stderr_tail))
        except Exception as exc:  # the fake's own bug, or an unreachable emulator: a failed job that says so
            self._set(job, JobState.JOB_STATE_FAILED, error=(13, f"{ME} failed: {type(exc).__name__}: {exc}"))

    def _platform_env(self, job: _Job, base: str) -> dict[str, str]:
        project = job.message.name.split("/")[1]
        with socket.socket() as probe:  # a port of its own, so jobs running side by side do not collide
            probe.bind(("127.0.0.1", 0))
            host = f"127.0.0.1:{probe.getsockname()[1]}"
        spec_json = json.loads(json_format.MessageToJson(aiplatform_v1.CustomJobSpec.pb(job.message.job_spec)))
        cluster = {"cluster": {"workerpool0": [host]}, "environment": "cloud", "task": {"type": "workerpool0", "index": 0},
                   "job": spec_json}
        tf_config = {"cluster": {"chief": [host]}, "environment": "cloud", "task": {"type": "chief", "index": 0}, "job": spec_json}
        env = {"CLOUD_ML_JOB_ID": job.job_id, "CLOUD_ML_PROJECT_ID": project, "CLOUD_ML_REGION": job.location,
               "CLUSTER_SPEC": json.dumps(cluster), "TF_CONFIG": json.dumps(tf_config)}
        if base:
            base = base.rstrip("/")
            env.update(AIP_MODEL_DIR=f"{base}/model/", AIP_CHECKPOINT_DIR=f"{base}/checkpoints/",
                       AIP_TENSORBOARD_LOG_DIR=f"{base}/logs/")
        return env

    def _install(self, job: _Job, mirror: _Mirror, spec: aiplatform_v1.PythonPackageSpec, env: dict) -> list[str] | None:
        """pip-install the package into the job's folder; the command, or None after failing the job."""
        uri = spec.package_uris[0]
        archive = job.folder / "package" / uri.rsplit("/", 1)[-1]
        mirror.fetch(uri, archive)
        target = job.folder / "site-packages"
        result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
                                 "--disable-pip-version-check", "--quiet", "--target", str(target), str(archive)],
                                capture_output=True, text=True, env={**env, "PIP_CONFIG_FILE": os.devnull})
        if result.returncode != 0:
            for line in result.stdout.splitlines():
                self._log(job, SEVERITIES["INFO"], line)
            for line in result.stderr.splitlines():
                self._log(job, SEVERITIES["ERROR"], line)
            tail = "\n".join(result.stderr.strip().splitlines()[-10:])
            self._set(job, JobState.JOB_STATE_FAILED, error=(3, REPLICA_FAILED.format(code=result.returncode) + "\n" + tail))
            return None
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), env.get("PYTHONPATH", "")) if p)
        return [sys.executable, "-m", spec.python_module, *spec.args]

    def _attempt(self, job: _Job, command: list[str], env: dict, mirror: _Mirror, started: float,
                 timeout: float) -> tuple[int, str]:
        """Run the program once: output to the log store, the mirror synced; (exit code, stderr tail)."""
        job.folder.mkdir(parents=True, exist_ok=True)
        cwd = tempfile.mkdtemp(prefix="cwd-", dir=job.folder)
        tail: list[str] = []
        with self._lock:
            if job.cancel_requested:
                return 0, ""
            job.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           start_new_session=True)
            job.pids.append(job.process.pid)
            if job.message.state == JobState.JOB_STATE_PENDING:
                self._set(job, JobState.JOB_STATE_RUNNING)

        def read(stream, severity: int) -> None:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line:
                    self._log(job, severity, line)
                    if severity == SEVERITIES["ERROR"]:
                        tail[:] = [*tail[-9:], line]
            stream.close()

        readers = [threading.Thread(target=read, args=(job.process.stdout, SEVERITIES["INFO"]), daemon=True),
                   threading.Thread(target=read, args=(job.process.stderr, SEVERITIES["ERROR"]), daemon=True)]
        for reader in readers:
            reader.start()
        try:
            while any(r.is_alive() for r in readers):  # the pipes close once every process of the group holding them is gone
                readers[0].join(self.sync_interval_s)
                mirror.sync()
                if timeout and not job.timed_out and time.monotonic() - started > timeout:
                    job.timed_out = True
                    self._signal(job)
                if job.signalled_at is not None and time.monotonic() - job.signalled_at > self.grace_s:
                    self._kill(job, signal.SIGKILL)
            code = job.process.wait()
        finally:
            mirror.sync(final=True)
            with self._lock:
                job.process, job.signalled_at = None, None
        return code, "\n".join(tail)


class _Mirror:
    """The job's stand-in for Cloud Storage FUSE: ``root/<bucket>/<key>``, downloaded, then written through."""

    def __init__(self, project: str, root: Path):
        from google.cloud import storage

        self.client = storage.Client(project=project, credentials=AnonymousCredentials())
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.stats: dict[Path, tuple[int, int]] = {}
        self.sent: dict[Path, str] = {}  # SHA-256 of what GCS holds

    def download(self, uri: str) -> None:
        from google.api_core.exceptions import NotFound

        bucket, _, prefix = uri.removeprefix("gs://").partition("/")
        prefix = prefix.split("*")[0]
        with contextlib.suppress(NotFound):
            for blob in self.client.list_blobs(bucket, prefix=prefix):
                if not blob.name.endswith("/"):
                    self.fetch(f"gs://{bucket}/{blob.name}", self.root / bucket / blob.name, track=True)

    def fetch(self, uri: str, target: Path, *, track: bool = False) -> None:
        bucket, _, key = uri.removeprefix("gs://").partition("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        data = self.client.bucket(bucket).blob(key).download_as_bytes()
        target.write_bytes(data)
        if track:
            self.sent[target] = hashlib.sha256(data).hexdigest()
            info = target.stat()
            self.stats[target] = (info.st_size, info.st_mtime_ns)

    def sync(self, *, final: bool = False) -> None:
        """Upload new or changed files; ``final`` compares contents too (a rewrite within one mtime tick)."""
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            with contextlib.suppress(FileNotFoundError):  # replaced while we looked
                info = path.stat()
                stat = (info.st_size, info.st_mtime_ns)
                if self.stats.get(path) == stat and not final:
                    continue
                data = path.read_bytes()  # read once, send those bytes: a file mid-write goes up as it is now
                digest = hashlib.sha256(data).hexdigest()
                if self.sent.get(path) != digest:
                    bucket, key = path.relative_to(self.root).as_posix().split("/", 1)
                    self.client.bucket(bucket).blob(key).upload_from_string(data)
                    self.sent[path] = digest
                self.stats[path] = stat
