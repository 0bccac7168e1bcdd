"""SageMaker training jobs that really run: moto's SageMaker, extended in-process, for tests.

moto 5.2.5 stores a CreateTrainingJob, calls it Completed at once and runs nothing. Installed into the
``ThreadedMotoServer`` the tests start (same process), ``SageMakerFake`` makes each created job run the
way SageMaker runs a script-mode job on an AWS deep-learning image, against the same server's S3 and
CloudWatch Logs, through boto3:

* **CreateTrainingJob** refuses a name in use (``ResourceInUse``, SageMaker's message), keeps
  ``Environment`` and the ``MetricDefinitions`` as given (moto drops the first, replaces the second),
  answers ``ResourceLimitExceeded`` in SageMaker's words for a quota a test set with ``refuse_quota``,
  and starts a runner thread.
* **The runner**, per attempt, lays out a fresh temporary ``/opt/ml`` root (``SAGEMAKER_BASE_DIR``, the
  training toolkit's override of ``/opt/ml``): every ``InputDataConfig`` channel downloaded from S3 into
  ``input/data/<channel>/`` (keys relative to the S3 prefix), ``input/config/hyperparameters.json`` (the
  HyperParameters as given: strings), ``inputdataconfig.json``, ``resourceconfig.json`` (one host,
  ``algo-1``), and the checkpoint prefix downloaded into ``checkpoints/`` when it holds objects. It then
  runs the real ``sagemaker-training`` toolkit (``python -m sagemaker_training.cli.train``, what the
  image's ``train`` command is) with this interpreter, in its own process group: the toolkit downloads
  ``sagemaker_submit_directory`` from S3 into ``code/`` and runs ``sagemaker_program`` there. The
  container's environment is this process's (the "image": Python, PYTHONPATH, the AWS endpoint and test
  credentials), ``PYTHONUNBUFFERED=1`` (as the images set it), then the job's ``Environment``, then what
  the platform sets: ``SAGEMAKER_BASE_DIR``, ``TRAINING_JOB_NAME``, ``TRAINING_JOB_ARN``, ``AWS_REGION``,
  ``S3_ENDPOINT_URL`` (the toolkit's own S3 endpoint variable), ``SM_STUDIO_LOCAL_MODE=true`` (the
  toolkit's switch that skips waiting for the host name ``algo-1`` to resolve) and pip settings that keep
  it from installing anything (``PIP_NO_INDEX=1``, no pip config): a ``requirements.txt`` in the bundle
  must already be satisfied by this interpreter, or the job fails as on an image without network.
  stdout and stderr go line by line to CloudWatch Logs, group ``/aws/sagemaker/TrainingJobs``, stream
  ``<job>/algo-1-<epoch seconds>`` (a new stream per attempt); ``checkpoints/`` is uploaded to
  ``CheckpointConfig.S3Uri`` file by file (new or changed files, every ``sync_interval_s`` and at the
  end; a file caught mid-write goes up as it is then and again once it changes, the last sync comparing
  contents; nothing is deleted in S3). At the end ``model/`` is packed (files at the archive's root) into
  ``<S3OutputPath>/<job>/output/model.tar.gz`` (``output/data/``, if not empty, into ``output.tar.gz``).
* **Describe** moves through ``InProgress`` (SecondaryStatus Starting, Downloading, Training, Uploading)
  to ``Completed``, ``Failed`` (``FailureReason`` ``AlgorithmError: <output/failure>, exit code: N``, or
  ``ClientError: No S3 objects found ...`` for an empty channel) or ``Stopped``, with
  ``SecondaryStatusTransitions``, ``TrainingStartTime``/``TrainingEndTime``, ``TrainingTimeInSeconds``
  and ``BillableTimeInSeconds`` (a managed spot job bills ``1 - spot_saving`` of it) and
  ``ModelArtifacts`` once uploaded (a Failed job uploads no model: whether SageMaker does is not
  verified here).
* **StopTrainingJob** (moto lacks it): ``Stopping``, SIGTERM to the job's process group, checkpoints
  synced, the model dir uploaded (SageMaker keeps what the program saved in its grace period), then
  ``Stopped``; SIGKILL after ``stop_grace_s`` (120 s, as documented). Stopping a job that is not
  InProgress is SageMaker's ValidationException.
* **Spot interruption** (``interrupt(job)``, a test's call): SecondaryStatus ``Interrupted``, SIGTERM,
  checkpoints synced, then ``Restarting`` and ``Training`` again in a fresh root that downloads them;
  the job stays InProgress throughout and the transitions show the restart.

Not emulated: more than one instance, Pipe input mode, data sources other than S3Prefix, custom images
(``TrainingImage`` is recorded, never run: the job runs in this interpreter), ``MaxRuntimeInSeconds`` /
``MaxWaitTimeInSeconds`` (never enforced), metrics (``FinalMetricDataList`` stays empty; the
definitions are only stored), warm pools, profiler and debugger rules, VPC and network isolation, IAM
(the role is not assumed), the instance type's hardware, and jobs of the same name in two regions or
accounts at once (the control API finds a job by its name). The StatusMessages of Interrupted and
Restarting are the fake's own words.

Signals, the one place where the fake is kinder than SageMaker: it sends SIGTERM to the whole process
group, so the program gets it. On SageMaker's deep-learning images the container's PID 1 is a shell and
the toolkit does not forward signals (sagemaker-training-toolkit issues #125 and #173,
deep-learning-containers #632), so a script there may get no SIGTERM before the SIGKILL. Set
``sigterm_reaches_program = False`` (a constructor argument and attribute) to test that: the group is
SIGKILLed at once (the grace period is not waited out) and only checkpoints synced before survive.

Patched in moto (``install``, undone by ``close``): ``SageMakerResponse.create_training_job`` (wrapped)
and ``SageMakerResponse.stop_training_job`` (added). Both are response-layer methods because moto's
handler drops ``Environment`` before its backend sees it and the server dispatches only the actions
its response class defines; the job itself stays moto's ``FakeTrainingJob``, whose attributes describe
serializes (each is assigned whole, never mutated, since describe may read it from another thread).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from moto.core.responses import ActionResult
from moto.core.utils import utcnow as _now
from moto.sagemaker.exceptions import AWSValidationException, ResourceInUseException, SagemakerClientError, ValidationError
from moto.sagemaker.responses import SageMakerResponse

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
HOST = "algo-1"
TERMINAL = ("Completed", "Failed", "Stopped")
QUOTA_MESSAGE = (
    "The account-level service limit '{instance_type} for {kind}training job usage' is {limit} Instances, "
    "with current utilization of {used} Instances and a request delta of {delta} Instances. Please use AWS "
    "Service Quotas to request an increase for this quota. If AWS Service Quotas is not available, contact "
    "AWS support to request an increase for this quota."
)
IN_USE_MESSAGE = ("Training job names must be unique within an AWS account and region, and a training job "
                  "with this name already exists ({arn})")
EMPTY_CHANNEL_MESSAGE = (
    'ClientError: No S3 objects found under S3 URL "{uri}" given in input data source. Please ensure that the '
    "bucket exists in the selected region ({region}), that objects exist under that S3 prefix, and that the "
    'role "{role}" has "s3:ListBucket" permissions on bucket "{bucket}".'
)


class ResourceLimitExceeded(SagemakerClientError):
    """SageMaker's answer to a create that would exceed a service quota."""

    code = "ResourceLimitExceeded"


@dataclass
class _Run:
    """One training job's runner: its thread, the process of the current attempt, what was asked of it."""

    job: Any  # moto's FakeTrainingJob
    region: str
    thread: threading.Thread | None = None
    process: subprocess.Popen | None = None
    stop_requested: bool = False
    interrupt_requested: bool = False
    signalled_at: float | None = None
    attempt: int = 0
    roots: list[Path] = field(default_factory=list)
    last_stream_second: int = 0


class SageMakerFake:
    """Runs moto's SageMaker training jobs for real (module docstring). A context manager: ``install``
    on entry, ``close`` on exit. The control API for tests: ``refuse_quota``, ``interrupt``, ``wait``."""

    def __init__(self, endpoint: str, *, workdir: str | Path | None = None, sync_interval_s: float = 0.5,
                 stop_grace_s: float = 120.0, spot_saving: float = 0.7, sigterm_reaches_program: bool = True):
        self.endpoint = endpoint
        self._own_workdir = None if workdir else tempfile.TemporaryDirectory(prefix="sagemaker-fake-")
        self.workdir = Path(workdir or self._own_workdir.name)
        self.sync_interval_s = sync_interval_s
        self.stop_grace_s = stop_grace_s
        self.spot_saving = spot_saving
        self.sigterm_reaches_program = sigterm_reaches_program
        self._quotas: dict[tuple[str, bool], int] = {}
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._originals: dict[str, Any] = {}

    # --- the control API ------------------------------------------------------------------------------
    def refuse_quota(self, instance_type: str, *, spot: bool = False, limit: int = 0) -> None:
        """Give ``instance_type`` (on-demand, or managed spot with ``spot=True``) a quota of ``limit``
        instances: a CreateTrainingJob that would go past it, counting the InProgress jobs of that kind,
        is refused with ResourceLimitExceeded."""
        self._quotas[(instance_type, spot)] = limit

    def interrupt(self, job_name: str) -> None:
        """Reclaim a running managed spot job's instance: SecondaryStatus Interrupted, SIGTERM (see the
        module docstring), checkpoints synced, then a restart that resumes from them."""
        run = self._runs.get(job_name)
        if run is None or not run.job.enable_managed_spot_training:
            raise ValueError(f"{job_name!r} is not a managed spot training job of this fake; only those are interrupted")
        if run.job.secondary_status != "Training" or run.process is None:
            raise ValueError(f"{job_name!r} is not training now (SecondaryStatus {run.job.secondary_status}); "
                             "interrupt it while its program runs")
        run.interrupt_requested = True
        _transition(run.job, "Interrupted", "Spot instance interrupted; the job restarts from its checkpoints")
        self._signal(run)

    def wait(self, job_name: str, timeout: float = 60.0) -> str:
        """Block until the job's runner is done; its TrainingJobStatus. TimeoutError after ``timeout``."""
        run = self._runs[job_name]
        run.thread.join(timeout)
        if run.thread.is_alive():
            raise TimeoutError(f"training job {job_name} still {run.job.secondary_status} after {timeout:.0f} s")
        return run.job.training_job_status

    def roots(self, job_name: str) -> list[Path]:
        """The ``/opt/ml`` roots of the job's attempts, oldest first (for a test to look inside)."""
        return list(self._runs[job_name].roots)

    # --- installing into moto -------------------------------------------------------------------------
    def install(self) -> SageMakerFake:
        if self._originals:
            return self
        if hasattr(SageMakerResponse, "stop_training_job"):
            raise RuntimeError("another SageMakerFake is installed (or moto now has StopTrainingJob: revisit this fake)")
        fake = self
        original_create = SageMakerResponse.create_training_job
        self._originals = {"create_training_job": original_create}

        def create_training_job(response: Any) -> Any:
            fake._refuse(response)
            algorithm = copy.deepcopy(response._get_param("AlgorithmSpecification"))  # moto rewrites MetricDefinitions
            result = original_create(response)
            fake._start(response, algorithm)
            return result

        def stop_training_job(response: Any) -> Any:
            fake._stop(response.sagemaker_backend, response._get_param("TrainingJobName"))
            return ActionResult({})

        SageMakerResponse.create_training_job = create_training_job
        SageMakerResponse.stop_training_job = stop_training_job
        return self

    def close(self) -> None:
        """Kill every job's processes, wait for the runners and undo the patches."""
        for run in list(self._runs.values()):
            run.stop_requested = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if run.process is not None:
                    os.killpg(run.process.pid, signal.SIGKILL)
        for run in list(self._runs.values()):
            if run.thread is not None:
                run.thread.join(15)
        if self._originals:
            SageMakerResponse.create_training_job = self._originals["create_training_job"]
            del SageMakerResponse.stop_training_job
            self._originals = {}
        if self._own_workdir is not None:
            self._own_workdir.cleanup()

    def __enter__(self) -> SageMakerFake:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the API calls --------------------------------------------------------------------------------
    def _refuse(self, response: Any) -> None:
        """What SageMaker refuses before it creates anything: a name in use, a quota, and (the fake's
        limits) what it does not emulate."""
        backend = response.sagemaker_backend
        name = response._get_param("TrainingJobName")
        if name in backend.training_jobs:
            raise ResourceInUseException(IN_USE_MESSAGE.format(arn=backend.training_jobs[name].arn))
        resources = response._get_param("ResourceConfig") or {}
        count = int(resources.get("InstanceCount", 1))
        if count != 1:
            raise AWSValidationException(f"InstanceCount {count}: the SageMaker fake (tests/fakes/sagemaker.py) runs one instance")
        for channel in response._get_param("InputDataConfig") or []:
            source = channel.get("DataSource", {}).get("S3DataSource", {})
            mode = channel.get("InputMode") or (response._get_param("AlgorithmSpecification") or {}).get("TrainingInputMode")
            if source.get("S3DataType", "S3Prefix") != "S3Prefix" or not source.get("S3Uri") or mode == "Pipe":
                raise AWSValidationException(f"channel {channel.get('ChannelName')!r}: the SageMaker fake emulates "
                                             "File-mode S3Prefix channels only")
        local = (response._get_param("CheckpointConfig") or {}).get("LocalPath", "/opt/ml/checkpoints")
        if not local.startswith("/opt/ml/"):
            raise AWSValidationException(f"CheckpointConfig.LocalPath {local!r}: the SageMaker fake maps only paths under /opt/ml/")
        spot = bool(response._get_param("EnableManagedSpotTraining", False))
        instance_type = resources.get("InstanceType", "")
        limit = self._quotas.get((instance_type, spot))
        if limit is not None:
            used = sum(int(job.resource_config.get("InstanceCount", 1)) for job in backend.training_jobs.values()
                       if job.training_job_status in ("InProgress", "Stopping")
                       and job.resource_config.get("InstanceType") == instance_type
                       and bool(job.enable_managed_spot_training) == spot)
            if used + count > limit:
                raise ResourceLimitExceeded(QUOTA_MESSAGE.format(instance_type=instance_type, kind="spot " if spot else "",
                                                                 limit=limit, used=used, delta=count))

    def _start(self, response: Any, algorithm: dict) -> None:
        backend = response.sagemaker_backend
        job = backend.training_jobs[response._get_param("TrainingJobName")]
        now = _now()
        # Every attribute describe will show is set here, before the runner starts (see the docstring).
        job.algorithm_specification = algorithm
        job.environment = response._get_param("Environment") or None
        job.training_job_status = "InProgress"
        job.secondary_status = "Starting"
        job.secondary_status_transitions = [{"Status": "Starting", "StartTime": now,
                                             "StatusMessage": "Preparing the instances for training"}]
        job.model_artifacts = None
        job.final_metric_data_list = None
        job.training_start_time = job.training_end_time = None
        job.training_time_in_seconds = job.billable_time_in_seconds = None
        job.failure_reason = None
        job.last_modified_time = now
        run = _Run(job=job, region=backend.region_name)
        run.thread = threading.Thread(target=self._run, args=(run,), name=f"sagemaker-fake-{job.training_job_name}", daemon=True)
        self._runs[job.training_job_name] = run
        run.thread.start()

    def _stop(self, backend: Any, name: str) -> None:
        backend.describe_training_job(name)  # moto's error for a job that does not exist
        job = backend.training_jobs[name]
        run = self._runs.get(name)
        if run is None or job.training_job_status != "InProgress":
            raise ValidationError(f"The request was rejected because the training job is in status {job.training_job_status}.")
        run.stop_requested = True
        _transition(job, "Stopping", "Stopping the training job", job_status="Stopping")
        self._signal(run)

    def _signal(self, run: _Run) -> None:
        with self._lock:
            if run.process is None:  # not started yet: the runner checks the flags before it starts one
                return
            run.signalled_at = time.monotonic()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.process.pid, signal.SIGTERM if self.sigterm_reaches_program else signal.SIGKILL)

    # --- the runner -----------------------------------------------------------------------------------
    def _run(self, run: _Run) -> None:
        job = run.job
        aws = _Aws(self.endpoint, run.region)
        exit_code: int | None = None
        try:
            job.training_start_time = _now()
            _transition(job, "Downloading", "Downloading input data")
            while not run.stop_requested:
                run.attempt += 1
                root = Path(tempfile.mkdtemp(prefix=f"{job.training_job_name}-{run.attempt}-", dir=self._workdir()))
                run.roots.append(root)
                failure = self._stage(aws, job, root)
                if failure:
                    return self._finish(aws, run, root, failed=failure)
                if run.stop_requested:
                    break
                _transition(job, "Training", "Training image download completed. Training in progress.")
                exit_code = self._attempt(aws, run, root)
                if run.interrupt_requested and not run.stop_requested:
                    run.interrupt_requested = False
                    _transition(job, "Restarting", "Restarting the training job on a new spot instance")
                    continue
                break
            root = run.roots[-1] if run.roots else None
            if run.stop_requested:
                return self._finish(aws, run, root, stopped=True)
            if exit_code != 0:
                text = (root / "output" / "failure").read_text(errors="replace") if (root / "output" / "failure").is_file() else ""
                return self._finish(aws, run, root, failed=f"AlgorithmError: {text.strip()}, exit code: {exit_code}"[:1024])
            self._finish(aws, run, root)
        except Exception as exc:  # the fake's own bug: a failed job that says so, not a hung test
            self._finish(aws, run, None, failed=f"InternalServerError: the SageMaker fake failed: {type(exc).__name__}: {exc}")

    def _workdir(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self.workdir

    def _stage(self, aws: _Aws, job: Any, root: Path) -> str | None:
        """Lay out ``/opt/ml`` under ``root``; the FailureReason if a channel holds no objects."""
        config = root / "input" / "config"
        config.mkdir(parents=True)
        for folder in ("model", "output/data", "checkpoints"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        default_mode = job.algorithm_specification.get("TrainingInputMode", "File")
        data_config = {}
        for channel in job.input_data_config or []:
            name, source = channel["ChannelName"], channel["DataSource"]["S3DataSource"]
            if not aws.download_prefix(source["S3Uri"], root / "input" / "data" / name, folder_prefix=False):
                bucket = source["S3Uri"].removeprefix("s3://").split("/")[0]
                return EMPTY_CHANNEL_MESSAGE.format(uri=source["S3Uri"], region=aws.region, role=job.role_arn, bucket=bucket)
            data_config[name] = {"TrainingInputMode": channel.get("InputMode") or default_mode,
                                 "S3DistributionType": source.get("S3DataDistributionType", "FullyReplicated"),
                                 "RecordWrapperType": channel.get("RecordWrapperType", "None")}
            if channel.get("ContentType"):
                data_config[name]["ContentType"] = channel["ContentType"]
        instance_type = job.resource_config.get("InstanceType", "")
        resource_config = {"current_host": HOST, "hosts": [HOST], "current_instance_type": instance_type,
                           "current_group_name": "homogeneousCluster", "network_interface_name": "eth0",
                           "instance_groups": [{"instance_group_name": "homogeneousCluster",
                                                "instance_type": instance_type, "hosts": [HOST]}]}
        (config / "hyperparameters.json").write_text(json.dumps(job.hyper_parameters or {}))
        (config / "inputdataconfig.json").write_text(json.dumps(data_config))
        (config / "resourceconfig.json").write_text(json.dumps(resource_config))
        if job.checkpoint_config:
            aws.download_prefix(job.checkpoint_config["S3Uri"], _checkpoint_dir(job, root), folder_prefix=True)
        return None

    def _attempt(self, aws: _Aws, run: _Run, root: Path) -> int:
        """Run the toolkit once in ``root``: logs streamed, checkpoints synced; its exit code."""
        job = run.job
        second = max(int(time.time()), run.last_stream_second + 1)  # a new stream per attempt, even within a second
        run.last_stream_second = second
        logs = _LogStream(aws, f"{job.training_job_name}/{HOST}-{second}")
        checkpoints = _Checkpoints(aws, job, root)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(job.environment or {}),
               "SAGEMAKER_BASE_DIR": str(root), "TRAINING_JOB_NAME": job.training_job_name, "TRAINING_JOB_ARN": job.arn,
               "AWS_REGION": run.region, "AWS_DEFAULT_REGION": run.region, "AWS_ENDPOINT_URL": self.endpoint,
               "S3_ENDPOINT_URL": self.endpoint, "SM_STUDIO_LOCAL_MODE": "true",
               "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        with self._lock:
            if run.stop_requested:  # asked to stop before it started
                return 0
            run.process = subprocess.Popen([sys.executable, "-m", "sagemaker_training.cli.train"], cwd=root, env=env,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        reader = threading.Thread(target=logs.read, args=(run.process.stdout,), daemon=True)
        reader.start()
        try:
            # The pipe closes when every process holding it has exited: the toolkit and the program it started
            # (which outlives the toolkit when SIGTERM reaches the whole group).
            while reader.is_alive():
                reader.join(self.sync_interval_s)
                checkpoints.sync()
                logs.flush()
                if run.signalled_at is not None and time.monotonic() - run.signalled_at > self.stop_grace_s:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(run.process.pid, signal.SIGKILL)
            code = run.process.wait()
        finally:
            checkpoints.sync(final=True)
            logs.flush()
            with self._lock:
                run.process, run.signalled_at = None, None
        return code

    def _finish(self, aws: _Aws, run: _Run, root: Path | None, *, failed: str | None = None, stopped: bool = False) -> None:
        job = run.job
        if root is not None and failed is None:
            if not stopped:
                _transition(job, "Uploading", "Uploading generated training model")
            output = job.output_data_config["S3OutputPath"].rstrip("/") + f"/{job.training_job_name}/output"
            aws.upload_tar(root / "model", f"{output}/model.tar.gz")
            job.model_artifacts = {"S3ModelArtifacts": f"{output}/model.tar.gz"}
            if any((root / "output" / "data").iterdir()):
                aws.upload_tar(root / "output" / "data", f"{output}/output.tar.gz")
        end = _now()
        job.training_end_time = end
        seconds = max(1, math.ceil((end - (job.training_start_time or end)).total_seconds()))
        job.training_time_in_seconds = seconds
        job.billable_time_in_seconds = max(1, int(seconds * (1 - self.spot_saving))) if job.enable_managed_spot_training else seconds
        if failed is not None:
            job.failure_reason = failed
            _transition(job, "Failed", "Training job failed", job_status="Failed", final=True)
        elif stopped:
            _transition(job, "Stopped", "Training job stopped", job_status="Stopped", final=True)
        else:
            _transition(job, "Completed", "Training job completed", job_status="Completed", final=True)


def _transition(job: Any, status: str, message: str, *, job_status: str | None = None, final: bool = False) -> None:
    """Move the job's SecondaryStatus on (copy on write: describe may be reading the list)."""
    now = _now()
    previous = [dict(t) for t in job.secondary_status_transitions]
    if previous and "EndTime" not in previous[-1]:
        previous[-1]["EndTime"] = now
    entry = {"Status": status, "StartTime": now, "StatusMessage": message, **({"EndTime": now} if final else {})}
    job.secondary_status_transitions = [*previous, entry]
    job.secondary_status = status
    if job_status:
        job.training_job_status = job_status
    job.last_modified_time = now


def _checkpoint_dir(job: Any, root: Path) -> Path:
    local = job.checkpoint_config.get("LocalPath") or "/opt/ml/checkpoints"
    return root / PurePosixPath(local).relative_to("/opt/ml")


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


class _Aws:
    """The runner's boto3 clients against the moto server (one session per runner thread)."""

    def __init__(self, endpoint: str, region: str):
        import boto3

        session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=region)
        self.region = region
        self.s3 = session.client("s3", endpoint_url=endpoint)
        self.logs = session.client("logs", endpoint_url=endpoint)

    def download_prefix(self, uri: str, dest: Path, *, folder_prefix: bool) -> int:
        """Download every object under ``uri`` into ``dest``, keys relative to it; how many. A channel's
        S3Prefix is a key prefix (``data/train`` also takes ``data/train-2/x``); a checkpoint URI is a folder."""
        bucket, prefix = _split(uri)
        if folder_prefix:
            prefix = prefix.rstrip("/") + "/"
        try:
            objects = [o["Key"] for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                       for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        except self.s3.exceptions.NoSuchBucket:
            objects = []
        for key in objects:
            relative = PurePosixPath(key[len(prefix):].lstrip("/") or PurePosixPath(key).name)
            if relative.is_absolute() or ".." in relative.parts:
                raise ValueError(f"s3://{bucket}/{key} would land outside {dest}")
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            self.s3.download_file(bucket, key, str(target))
        return len(objects)

    def upload_tar(self, folder: Path, uri: str) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            archive = Path(scratch) / "archive.tar.gz"
            with tarfile.open(archive, "w:gz") as tar:
                for child in sorted(folder.iterdir()):
                    tar.add(child, arcname=child.name)
            bucket, key = _split(uri)
            self.s3.upload_file(str(archive), bucket, key)


class _Checkpoints:
    """``checkpoints/`` uploaded to ``CheckpointConfig.S3Uri`` file by file: new or changed files only."""

    def __init__(self, aws: _Aws, job: Any, root: Path):
        self.aws = aws
        self.target = _split(job.checkpoint_config["S3Uri"]) if job.checkpoint_config else None
        self.folder = _checkpoint_dir(job, root) if job.checkpoint_config else None
        self.stats: dict[Path, tuple[int, int]] = {}
        self.sent: dict[Path, str] = {}  # the SHA-256 of what is in S3

    def sync(self, *, final: bool = False) -> None:
        """Upload what changed since the last sync; ``final`` (the program has exited) compares contents
        too, since a rewrite within one timestamp tick keeps a file's size and mtime."""
        if self.target is None or not self.folder.is_dir():
            return
        bucket, prefix = self.target
        for path in sorted(p for p in self.folder.rglob("*") if p.is_file()):
            with contextlib.suppress(FileNotFoundError):  # a file the program replaced while we looked
                info = path.stat()
                stat = (info.st_size, info.st_mtime_ns)
                if self.stats.get(path) == stat and not final:
                    continue
                # Read once and send those bytes: a file the program is still writing goes up as it is now (as
                # it may on SageMaker) and again once it changes. (upload_file sends the length it stat'ed,
                # then fewer bytes of a file cut short meanwhile, and the request hangs.)
                data = path.read_bytes()
                digest = hashlib.sha256(data).hexdigest()
                if self.sent.get(path) != digest:
                    key = f"{prefix.rstrip('/')}/{path.relative_to(self.folder).as_posix()}".lstrip("/")
                    self.aws.s3.put_object(Bucket=bucket, Key=key, Body=data)
                    self.sent[path] = digest
                self.stats[path] = stat


class _LogStream:
    """One attempt's CloudWatch Logs stream: lines buffered by the reader, sent by ``flush``."""

    def __init__(self, aws: _Aws, name: str):
        self.aws, self.name = aws, name
        self.events: list[dict] = []
        self.lock = threading.Lock()
        with contextlib.suppress(aws.logs.exceptions.ResourceAlreadyExistsException):
            aws.logs.create_log_group(logGroupName=LOG_GROUP)
        aws.logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=name)

    def read(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line:  # CloudWatch refuses empty messages
                with self.lock:
                    self.events.append({"timestamp": int(time.time() * 1000), "message": line})
        stream.close()

    def flush(self) -> None:
        with self.lock:
            events, self.events = self.events, []
        if events:
            self.aws.logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=self.name, logEvents=events)
