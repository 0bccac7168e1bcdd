"""The SageMaker backend: a job is a SageMaker training job, driven with plain boto3.

    launcher train job.yaml --backend sagemaker      # region, role and bucket: the spec's sagemaker:
                                                      # section, or AWS_REGION, LAUNCHER_SAGEMAKER_ROLE_ARN,
                                                      # LAUNCHER_SAGEMAKER_BUCKET, or the profile that
                                                      # 'launcher config from-terraform terraform/aws' wrote

What it does, and the decisions that are not obvious:

* **Staging** under ``s3://BUCKET/PREFIX/``: a local dataset goes to ``data/<content digest>/<channel>/``
  (the digest of the job identity), so unchanged data is found by one HEAD of its ``_complete`` marker
  and never uploaded twice; ``s3://`` data is used where it is. The code is the content-addressed source
  bundle (``launcher.bundle``) at ``bundles/<sha256>.tar.gz``, run by AWS's PyTorch training image in
  script mode (``sagemaker_program``, ``sagemaker_submit_directory``); with ``sagemaker.image_uri`` a
  custom image runs the entrypoint itself and no bundle is sent: the image of ``container/Dockerfile.train``
  (``launcher image build train && launcher image push train`` prints its URI).
* **One training job per attempt**, named ``<job id>-a<attempt>`` (SageMaker names are never reusable).
  ``find`` lists the names; ``submit`` looks its name up before creating it, and a ``ResourceInUse``
  answer (a create whose response was lost, then retried) is "already submitted": ``JobExists``. Every
  attempt shares the job's checkpoint prefix, so attempt N+1 resumes where N stopped.
* **Spot**: ``EnableManagedSpotTraining`` with ``MaxWaitTimeInSeconds`` (default twice the runtime) and a
  ``CheckpointConfig``: always set, since the entrypoint checkpoints, so a reclaimed instance resumes
  instead of restarting from scratch. SageMaker's own restart is RUNNING with a message and the
  platform's attempt count; a job stopped by its time limits is INTERRUPTED (at rest: resubmit). While a
  job trains, ``status`` checks the newest checkpoint under the prefix and says when uploads seem to have
  stopped (sagemaker-python-sdk#3062).
* **Secrets** travel as names: the Hub token as a Secrets Manager ARN in ``LAUNCHER_HF_TOKEN_SECRET``,
  read inside the job (``entrypoints.models.hub_token``).
* **Errors** are translated here, once: ``ResourceLimitExceeded`` names the quota and where to raise it,
  ``AccessDenied`` the missing action, ``ValidationException`` the spec key it points at; the rest goes
  through ``launcher.clouds.aws_errors``. Throttling and dropped connections are retried by botocore
  (standard mode) and, around create and polling, by tenacity; errors that cannot succeed are not.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from launcher import clouds, profile
from launcher.backends._sagemaker_serving import SageMakerServing
from launcher.backends.base import Backend, JobExists, JobInfo, JobRef, JobState, LaunchRequest, followed
from launcher.errors import BackendError, MissingExtraError, NotFoundError, SpecError

if TYPE_CHECKING:
    from launcher.spec import JobSpec

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
CHECKPOINT_PATH = "/opt/ml/checkpoints"
_NAME = re.compile(r"^(?P<job>.+)-a(?P<attempt>\d+)$")
_CHECKPOINT = re.compile(r"/step-(\d+)/complete\.json$")  # a complete checkpoint's marker (entrypoints/checkpoint.py)
# CloudWatch metrics from the lines the entrypoint prints (tests match them against its real output).
METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": r"step \d+/\d+ loss ([0-9.eE+-]+)"},
    {"Name": "train:learning_rate", "Regex": r"step \d+/\d+ loss [0-9.eE+-]+ lr ([0-9.eE+-]+)"},
    {"Name": "train:tokens_per_s", "Regex": r"tok/s ([0-9.]+)"},
    {"Name": "eval:loss_base", "Regex": r"eval loss: base ([0-9.eE+-]+) ->"},
    {"Name": "eval:loss_tuned", "Regex": r"eval loss: base [0-9.eE+-]+ -> tuned ([0-9.eE+-]+)"},
]
_PENDING = {"Starting", "Pending", "LaunchingMLInstances", "PreparingTrainingStack", "Downloading", "DownloadingTrainingImage"}
_AT_REST = {"MaxRuntimeExceeded", "MaxWaitTimeExceeded"}  # stopped by a limit, not by a user: resubmit to resume
# Request fields SageMaker's validation messages name -> the spec key that sets them.
_SPEC_KEYS = {
    "RoleArn": "sagemaker.role_arn", "InstanceType": "compute.accelerator (or compute.instance_type)",
    "MaxWaitTimeInSeconds": "sagemaker.max_wait", "MaxRuntimeInSeconds": "compute.max_runtime",
    "TrainingImage": "sagemaker.image_uri", "VolumeSizeInGB": "sagemaker.volume_gb", "Subnets": "sagemaker.subnets",
    "SecurityGroupIds": "sagemaker.security_group_ids", "KmsKeyId": "sagemaker.kms_key_id",
    "S3OutputPath": "sagemaker.bucket", "HyperParameters": "training", "InstanceCount": "compute.nodes",
}
CONSOLE = "https://{region}.console.aws.amazon.com/sagemaker/home?region={region}#/jobs/{name}"


@dataclass(frozen=True)
class Place:
    """Where a job's things go: its region, execution role and S3 locations."""

    region: str
    role_arn: str
    bucket: str
    prefix: str

    def uri(self, *parts: str) -> str:
        return "s3://" + "/".join([self.bucket, self.prefix.strip("/"), *parts])


class SageMakerBackend(SageMakerServing, Backend):
    """Training jobs and real-time endpoints on Amazon SageMaker (serving: ``_sagemaker_serving``)."""

    name: ClassVar[str] = "sagemaker"

    # --- configuration -------------------------------------------------------------------------------
    def _place(self, options: dict[str, Any]) -> Place:
        # Each setting: the spec (or --option), else its environment variable, else the profile.
        region = clouds.aws_region(options.get("region") or _profile_region(), service="sagemaker")
        role = options.get("role_arn") or os.environ.get("LAUNCHER_SAGEMAKER_ROLE_ARN") or profile.value("sagemaker", "role_arn")
        bucket = options.get("bucket") or os.environ.get("LAUNCHER_SAGEMAKER_BUCKET") or profile.value("sagemaker", "bucket")
        if not role:
            raise SpecError("no SageMaker execution role. To fix: set sagemaker.role_arn in the spec, or LAUNCHER_SAGEMAKER_ROLE_ARN, "
                            + profile.hint("sagemaker"))
        if not bucket:
            raise SpecError("no S3 bucket for the job's data, code and outputs. To fix: set sagemaker.bucket, or "
                            "LAUNCHER_SAGEMAKER_BUCKET, " + profile.hint("sagemaker"))
        prefix = options.get("prefix") or "launcher"
        if prefix == "launcher":  # the spec's default: the profile's prefix (the one its role may write under) wins
            prefix = profile.value("sagemaker", "prefix") or prefix
        return Place(region, role, bucket.removeprefix("s3://").strip("/"), prefix)

    def configured(self) -> bool:
        """Credentials the SDK would find without asking the network (environment, profile files,
        container or web-identity credentials) and a region."""
        env = os.environ
        credentials = (env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_PROFILE") or env.get("AWS_WEB_IDENTITY_TOKEN_FILE")
                       or env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
                       or (Path.home() / ".aws" / "credentials").is_file() or (Path.home() / ".aws" / "config").is_file())
        return bool(credentials and (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or (Path.home() / ".aws" / "config").is_file()
                                     or _profile_region()))

    def _client(self, service: str, region: str | None = None):
        return clouds.aws_client(service, region or self._region())

    def _region(self) -> str:
        """The spec's region once ``check`` has seen a spec (``launch`` checks before it looks the job
        up), else the environment's or profile's."""
        return clouds.aws_region(getattr(self, "_options", {}).get("region") or _profile_region(), service="sagemaker")

    def check(self, spec: JobSpec) -> list[str]:
        warnings = super().check(spec)
        options = spec.sagemaker.model_dump(mode="json")
        self._place(options)
        self._options = options
        instance, gpus = instance_type(spec.compute)
        if spec.compute.spot and not _spot_allowed(instance):
            raise SpecError(f"SageMaker offers no managed spot training on {instance}. To fix: compute.spot: false, or another accelerator")
        for channel, uri in spec.data.channels().items():
            if uri.startswith("gs://"):
                raise SpecError(f"data.{channel} = '{uri}': SageMaker reads S3 and local files. To fix: copy it to S3 or a local path")
        if not spec.sagemaker.image_uri and not script_image(spec.sagemaker.model_dump()):
            _require_image_resolver()
        accelerator = spec.compute.accelerator
        if accelerator is not None and gpus > accelerator.count:
            warnings.append(f"{instance} has {gpus} GPUs and the spec asks for {accelerator.count}; training uses "
                            f"{accelerator.count} of them")
        from launcher.memory import check_world

        check_world(spec.train_config(), spec.compute.nodes * (accelerator.count if accelerator else max(1, gpus)))
        return warnings

    # --- the request -----------------------------------------------------------------------------------
    def _staged(self, request: LaunchRequest, place: Place) -> dict[str, str]:
        return request.staged_channels("s3://", place.uri("data"))

    def body(self, request: LaunchRequest, place: Place, staged: dict[str, str], bundle_uri: str | None) -> dict[str, Any]:
        """The CreateTrainingJob request for ``request`` (what ``--dry-run`` shows)."""
        options = request.backend_options
        compute = request.compute
        instance, _ = instance_type(compute)
        name = native_name(request.job_id, request.attempt)
        hyperparameters = request.config.to_hyperparameters()
        image = request.image
        if bundle_uri is not None:  # AWS's image runs our bundle in script mode
            hyperparameters |= {"sagemaker_program": "launcher_train.py", "sagemaker_submit_directory": bundle_uri,
                                "sagemaker_region": place.region, "sagemaker_container_log_level": "20"}
            image = script_image(options) or resolve_image(place.region, instance, options)
        # The processes per instance (one per GPU asked for); the entrypoint starts torchrun with them,
        # its nodes and rendezvous from SM_HOSTS / SM_CURRENT_HOST (entrypoints.platform).
        environment = {"HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false",
                       "LAUNCHER_NPROC_PER_NODE": str(request.processes_per_host)}
        if options.get("hf_token_secret"):
            environment["LAUNCHER_HF_TOKEN_SECRET"] = options["hf_token_secret"]
        stopping = {"MaxRuntimeInSeconds": compute.max_runtime}
        if compute.spot:
            stopping["MaxWaitTimeInSeconds"] = options.get("max_wait") or 2 * compute.max_runtime
        body: dict[str, Any] = {
            "TrainingJobName": name,
            "AlgorithmSpecification": {"TrainingImage": image, "TrainingInputMode": "File",
                                       "MetricDefinitions": METRIC_DEFINITIONS, "EnableSageMakerMetricsTimeSeries": True},
            "RoleArn": place.role_arn,
            "InputDataConfig": [
                {"ChannelName": channel, "InputMode": "File", "DataSource": {"S3DataSource": {
                    "S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}}}
                for channel, uri in sorted(staged.items())
            ],
            "OutputDataConfig": {"S3OutputPath": request.output_uri or place.uri("jobs", request.job_id, "output")},
            "ResourceConfig": {"InstanceType": instance, "InstanceCount": compute.nodes, "VolumeSizeInGB": options.get("volume_gb", 100)},
            "StoppingCondition": stopping,
            "HyperParameters": hyperparameters,
            "Environment": environment,
            "CheckpointConfig": {"S3Uri": request.checkpoint_uri or place.uri("jobs", request.job_id, "checkpoints") + "/",
                                 "LocalPath": CHECKPOINT_PATH},
            "EnableManagedSpotTraining": compute.spot,
            "EnableNetworkIsolation": bool(options.get("network_isolation")),
            "Tags": [{"Key": k, "Value": str(v)} for k, v in sorted({**request.tags, "launcher-attempt": str(request.attempt)}.items())],
        }
        if options.get("kms_key_id"):
            body["OutputDataConfig"]["KmsKeyId"] = body["ResourceConfig"]["VolumeKmsKeyId"] = options["kms_key_id"]
        if options.get("subnets") or options.get("security_group_ids"):
            body["VpcConfig"] = {"Subnets": list(options.get("subnets") or []), "SecurityGroupIds": list(options.get("security_group_ids") or [])}
        if options.get("max_retries"):
            body["RetryStrategy"] = {"MaximumRetryAttempts": int(options["max_retries"])}
        return body

    def describe(self, request: LaunchRequest) -> dict[str, Any]:
        from launcher import bundle

        place = self._place(request.backend_options)
        code = None if request.image else place.uri("bundles", bundle.build().name)
        staged = self._staged(request, place)
        uploads = {channel: request.channels[channel] for channel in staged if not request.channels[channel].startswith("s3://")}
        hosts = [f"algo-{n}" for n in range(1, request.compute.nodes + 1)]  # SageMaker's names for the job's instances
        return {"CreateTrainingJob": self.body(request, place, staged, code), "torchrun (per instance)": request.torchrun(hosts),
                "uploads (unless already there)": {
            **{f"data.{c}": f"{src} -> {staged[c]}" for c, src in uploads.items()}, **({"code": code} if code else {})}}

    # --- training --------------------------------------------------------------------------------------
    def find(self, job_id: str) -> JobRef | None:
        sagemaker = self._client("sagemaker")
        names: list[tuple[int, str]] = []
        with _errors(f"training jobs named {job_id}-a*", "sagemaker:ListTrainingJobs"):
            for page in sagemaker.get_paginator("list_training_jobs").paginate(NameContains=job_id):
                for summary in page["TrainingJobSummaries"]:
                    match = _NAME.match(summary["TrainingJobName"])
                    if match and match["job"] == job_id:
                        names.append((int(match["attempt"]), summary["TrainingJobName"]))
        if not names:
            return None
        attempt, name = max(names)
        return JobRef(self.name, job_id, native_id=name, location={"region": self._region()}, attempt=attempt)

    def submit(self, request: LaunchRequest) -> JobRef:
        from launcher import bundle

        place = self._place(request.backend_options)
        sagemaker = self._client("sagemaker", place.region)
        name = native_name(request.job_id, request.attempt)
        ref = JobRef(self.name, request.job_id, native_id=name, location={"region": place.region}, attempt=request.attempt)
        if self._describe(ref, missing_ok=True) is not None:
            raise JobExists(ref)  # this attempt exists already (a launch that raced ours)
        staged = self._staged(request, place)
        s3 = self._client("s3", place.region)
        for channel, uri in request.channels.items():
            if not uri.startswith("s3://"):
                _upload_dataset(s3, uri, staged[channel])
        code = None
        if not request.image:
            code_bundle = bundle.build()
            code = place.uri("bundles", code_bundle.name)
            _upload_once(s3, code, code_bundle.data)
        body = self.body(request, place, staged, code)
        with _errors(f"training job {name}", "sagemaker:CreateTrainingJob"):
            for attempt in _retrying():  # the errors are translated once, after the retries
                with attempt:
                    try:
                        sagemaker.create_training_job(**body)
                    except Exception as exc:
                        if _code(exc) == "ResourceInUse":
                            raise JobExists(ref) from None  # created by an earlier try whose answer was lost
                        if _transient(exc) and self._describe(ref, missing_ok=True) is not None:
                            raise JobExists(ref) from None  # it landed; the answer did not
                        raise
        return ref

    def _describe(self, ref: JobRef, missing_ok: bool = False) -> dict[str, Any] | None:
        name = ref.native_id or (self.find(ref.job_id) or ref).native_id
        if not name:
            if missing_ok:
                return None
            raise NotFoundError(f"no SageMaker training job for '{ref.job_id}'. To fix: run 'launcher list --backend sagemaker'")
        sagemaker = self._client("sagemaker", ref.location.get("region"))
        try:
            with _errors(f"training job {name}", "sagemaker:DescribeTrainingJob"):
                for attempt in _retrying():
                    with attempt:
                        return sagemaker.describe_training_job(TrainingJobName=name)
        except NotFoundError:
            if missing_ok:
                return None
            raise
        return None  # pragma: no cover - _retrying re-raises

    def status(self, ref: JobRef) -> JobInfo:
        job = self._describe(ref)
        state, message = job_state(job)
        name = job["TrainingJobName"]
        region = ref.location.get("region") or self._region()
        match = _NAME.match(name)
        info = JobInfo(
            job_id=ref.job_id, backend=self.name, state=state, name=ref.job_id.rsplit("-", 2)[0],
            created_at=_iso(job.get("CreationTime")), updated_at=_iso(job.get("LastModifiedTime")), message=message,
            output=(job.get("ModelArtifacts") or {}).get("S3ModelArtifacts", "") if state is JobState.SUCCEEDED else "",
            attempt=int(match["attempt"]) if match else ref.attempt, native_id=name, location={"region": region},
            extra={"arn": job.get("TrainingJobArn", ""), "secondary_status": job.get("SecondaryStatus", ""),
                   "logs": f"CloudWatch Logs {LOG_GROUP}, streams {name}/*",
                   "console": CONSOLE.format(region=region, name=name),
                   "checkpoints": (job.get("CheckpointConfig") or {}).get("S3Uri", "")},
        )
        marks = self._checkpoints(job)
        info.checkpoint_step = max(marks)[1] if marks else None
        if state is JobState.RUNNING and job.get("EnableManagedSpotTraining"):
            stale = _stale_checkpoints(job, sorted(when for when, _ in marks))
            if stale:
                info.message = f"{info.message}; {stale}" if info.message else stale
        return info

    def _checkpoints(self, job: dict[str, Any]) -> list[tuple[Any, int]]:
        """(upload time, step) of each complete checkpoint under the job's checkpoint prefix: those whose
        completion marker, which the entrypoint writes last, has been uploaded."""
        uri = (job.get("CheckpointConfig") or {}).get("S3Uri")
        if not uri:
            return []
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        s3 = self._client("s3")
        with _errors(uri, "s3:ListBucket"):
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            objects = [o for page in pages for o in page.get("Contents", [])]
        found = ((o["LastModified"], _CHECKPOINT.search(o["Key"])) for o in objects)
        return [(when, int(match[1])) for when, match in found if match]

    def logs(self, ref: JobRef, follow: bool = False) -> Iterator[str]:
        """Every stream of the job (one per instance and platform attempt), oldest first; with ``follow``,
        new lines until the job ends (then whatever it wrote last)."""
        name = ref.native_id or (self.find(ref.job_id) or ref).native_id
        client = self._client("logs", ref.location.get("region"))
        tokens: dict[str, str | None] = {}

        def read() -> Iterator[str]:
            with _errors(f"log group {LOG_GROUP}", "logs:DescribeLogStreams"):
                try:
                    streams = [s["logStreamName"] for s in client.describe_log_streams(
                        logGroupName=LOG_GROUP, logStreamNamePrefix=f"{name}/").get("logStreams", [])]
                except Exception as exc:
                    if _code(exc) != "ResourceNotFoundException":
                        raise
                    streams = []  # no log group before the first job has written
            for stream in sorted(streams):
                while True:
                    kwargs = {"logGroupName": LOG_GROUP, "logStreamName": stream, "startFromHead": True}
                    if tokens.get(stream):
                        kwargs["nextToken"] = tokens[stream]
                    with _errors(f"log stream {stream}", "logs:GetLogEvents"):
                        page = client.get_log_events(**kwargs)
                    for event in page.get("events", []):
                        yield event["message"]
                    if page.get("nextForwardToken") == tokens.get(stream):
                        break
                    tokens[stream] = page.get("nextForwardToken")

        return followed(read, lambda: self.status(ref).state.active, follow)

    def cancel(self, ref: JobRef) -> JobInfo:
        info = self.status(ref)
        if info.state.active and info.state is not JobState.STOPPING:
            with _errors(f"training job {info.native_id}", "sagemaker:StopTrainingJob"):
                self._client("sagemaker", ref.location.get("region")).stop_training_job(TrainingJobName=info.native_id)
        return self.status(ref)

    def list(self, state: JobState | None = None) -> list[JobInfo]:
        sagemaker = self._client("sagemaker")
        latest: dict[str, tuple[int, str]] = {}
        with _errors("training jobs", "sagemaker:ListTrainingJobs"):
            for page in sagemaker.get_paginator("list_training_jobs").paginate(SortBy="CreationTime", SortOrder="Descending"):
                for summary in page["TrainingJobSummaries"]:
                    match = _NAME.match(summary["TrainingJobName"])
                    if match and int(match["attempt"]) > latest.get(match["job"], (0, ""))[0]:
                        latest[match["job"]] = (int(match["attempt"]), summary["TrainingJobName"])
        found = []
        region = self._region()
        for job_id, (attempt, name) in latest.items():
            info = self.status(JobRef(self.name, job_id, native_id=name, location={"region": region}, attempt=attempt))
            tags = self._tags(info.extra["arn"])
            if tags.get("launcher-job-id") == job_id and (state is None or info.state is state):
                found.append(info)
        return sorted(found, key=lambda i: i.created_at, reverse=True)

    def _tags(self, arn: str) -> dict[str, str]:
        with _errors(f"tags of {arn}", "sagemaker:ListTags"):
            return {t["Key"]: t["Value"] for t in self._client("sagemaker").list_tags(ResourceArn=arn).get("Tags", [])}


# --- pure pieces (tested on their own) ----------------------------------------------------------------
def _profile_region() -> str | None:
    """The profile's region, where no AWS_REGION / AWS_DEFAULT_REGION says otherwise."""
    return profile.value("sagemaker", "region", unless_env=("AWS_REGION", "AWS_DEFAULT_REGION"))


def native_name(job_id: str, attempt: int) -> str:
    name = f"{job_id}-a{attempt}"
    if len(name) > 63:
        raise SpecError(f"training job name '{name}' is longer than SageMaker's 63 characters. To fix: use a shorter name or run name")
    return name


def instance_type(compute) -> tuple[str, int]:
    """(instance type, its GPU count) for the spec's compute: the mapping ``launcher plan`` prices."""
    from launcher.plan import machine_for

    entry = machine_for("sagemaker", compute)
    return entry["instance_type"], entry["gpus"]


def _spot_allowed(instance: str) -> bool:
    from launcher.plan import instance_types

    return next((t.get("spot_allowed", True) for t in instance_types() if t["instance_type"] == instance), True)


def job_state(job: dict[str, Any]) -> tuple[JobState, str]:
    """SageMaker's TrainingJobStatus and SecondaryStatus as the shared state and a message."""
    status, secondary = job.get("TrainingJobStatus", ""), job.get("SecondaryStatus", "")
    restarts = sum(1 for t in job.get("SecondaryStatusTransitions") or [] if t.get("Status") == "Restarting")
    if status == "InProgress":
        if secondary == "Interrupted":
            return JobState.RUNNING, "spot capacity was reclaimed; SageMaker restarts the job from its newest checkpoint"
        if secondary == "Restarting" or restarts:
            return JobState.RUNNING, f"restarted by SageMaker after a spot interruption (platform attempt {restarts + 1})"
        if secondary in _PENDING:
            return JobState.PENDING, secondary
        return JobState.RUNNING, "" if secondary == "Training" else secondary
    if status == "Completed":
        return JobState.SUCCEEDED, _billing(job)
    if status == "Failed":
        reason = (job.get("FailureReason") or "no reason recorded").strip().splitlines()[0]
        return JobState.FAILED, reason
    if status == "Stopping":
        return JobState.STOPPING, "stop requested"
    if status == "Stopped":
        if secondary in _AT_REST:
            return JobState.INTERRUPTED, f"stopped by SageMaker ({secondary}) after a checkpoint. To fix: submit it again to resume"
        return JobState.CANCELLED, "stopped by user; submit it again to resume from its checkpoint"
    return JobState.PENDING, status


def _stale_checkpoints(job: dict[str, Any], marks: list[Any]) -> str:
    """A warning when checkpoint uploads seem to have stopped: the newest complete checkpoint is older
    than three of the intervals between the last ones (or no checkpoint after an hour of training)."""
    uri = (job.get("CheckpointConfig") or {}).get("S3Uri")
    started = job.get("TrainingStartTime")
    if started is None:
        return ""
    now = time.time()
    if not marks:
        age = now - started.timestamp()
        return f"no checkpoint under {uri} after {age / 60:.0f} min of training" if age > 3600 else ""
    newest = marks[-1].timestamp()
    interval = newest - marks[-2].timestamp() if len(marks) > 1 else 0
    if interval and now - newest > 3 * max(interval, 60):
        return (f"no checkpoint uploaded for {(now - newest) / 60:.0f} min (they came every {interval / 60:.0f} min): "
                f"uploads to {uri} may have stopped")
    return ""


def _billing(job: dict[str, Any]) -> str:
    trained, billed = job.get("TrainingTimeInSeconds"), job.get("BillableTimeInSeconds")
    if not trained or billed is None:
        return ""
    saving = 100.0 * (1 - billed / trained) if job.get("EnableManagedSpotTraining") else 0.0
    return f"trained {trained} s, billed {billed} s" + (f" (spot saved {saving:.0f}%)" if saving > 0 else "")


def script_image(options: dict[str, Any]) -> str | None:
    """The image the spec (or LAUNCHER_SAGEMAKER_SCRIPT_IMAGE) names to run the source bundle."""
    return options.get("script_image") or os.environ.get("LAUNCHER_SAGEMAKER_SCRIPT_IMAGE") or None


def resolve_image(region: str, instance: str, options: dict[str, Any]) -> str:
    """AWS's PyTorch training image for the region and instance (sagemaker-core's image_uris)."""
    image_uris = _require_image_resolver()
    try:
        return image_uris.retrieve("pytorch", region=region, version=options.get("framework_version", "2.8.0"),
                                   py_version=options.get("py_version", "py312"), instance_type=instance, image_scope="training")
    except ValueError as exc:
        raise SpecError(f"no AWS PyTorch training image for {instance} in {region} ({exc}). "
                        "To fix: set sagemaker.framework_version / py_version, or sagemaker.image_uri") from None


def _require_image_resolver():
    try:
        from sagemaker.core import image_uris
    except ImportError:
        raise MissingExtraError("sagemaker-core", "sagemaker-images",
                                "Running AWS's training image without sagemaker.image_uri (to look its URI up)") from None
    return image_uris


def _upload_dataset(s3, source: str, prefix_uri: str) -> None:
    """Upload a local dataset under its content-addressed prefix, once: the ``_complete`` marker, written
    last, says every file is there."""
    from launcher.data import dataset_files

    bucket, _, prefix = prefix_uri.removeprefix("s3://").partition("/")
    with _errors(prefix_uri, "s3:GetObject"):
        try:
            s3.head_object(Bucket=bucket, Key=prefix + "_complete")
            return
        except Exception as exc:
            if _code(exc) not in ("404", "NoSuchKey", "NotFound"):
                raise
    root = Path(source)
    with _errors(prefix_uri, "s3:PutObject"):
        for path in dataset_files(root):
            name = "__".join(path.relative_to(root).parts) if root.is_dir() else path.name
            s3.upload_file(str(path), bucket, prefix + name)
        s3.put_object(Bucket=bucket, Key=prefix + "_complete", Body=b"")


def _upload_once(s3, uri: str, data: bytes) -> None:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    with _errors(uri, "s3:PutObject"):
        try:
            s3.head_object(Bucket=bucket, Key=key)
            return  # content-addressed: the same name is the same bytes
        except Exception as exc:
            if _code(exc) not in ("404", "NoSuchKey", "NotFound"):
                raise
        s3.put_object(Bucket=bucket, Key=key, Body=data)


def _iso(value) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z") if value is not None else ""


def _code(exc: BaseException) -> str:
    return str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))


def _transient(exc: Exception) -> bool:
    """A failure a retry can mend: throttling, a 5xx, a dropped or timed-out connection."""
    import botocore.exceptions as errors

    if isinstance(exc, errors.ConnectionError | errors.ReadTimeoutError | errors.ConnectionClosedError):
        return True
    if isinstance(exc, errors.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return _code(exc) in clouds.AWS_THROTTLED or status >= 500
    return False


def _retrying():
    """tenacity around create and describe: a few tries, backing off, for transient failures only."""
    import tenacity

    return tenacity.Retrying(retry=tenacity.retry_if_exception(_transient), stop=tenacity.stop_after_attempt(5),
                             wait=tenacity.wait_exponential(multiplier=0.2, max=5), reraise=True)


class _errors:
    """SageMaker's errors at the border, with the quota, action or spec key they are about; everything
    else through ``clouds.aws_errors``."""

    def __init__(self, resource: str, permission: str, keys: dict[str, str] | None = None):
        self.resource, self.permission = resource, permission
        self.keys = _SPEC_KEYS if keys is None else keys  # request fields -> the spec key (or deploy option) that sets them
        self.inner = clouds.aws_errors(resource, permission)

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, JobExists):
            return self.inner.__exit__(kind, exc, tb)
        code, message = _code(exc), str((getattr(exc, "response", None) or {}).get("Error", {}).get("Message", ""))
        if code in ("ResourceLimitExceeded", "AccessDeniedException", "AccessDenied", "ValidationException"):
            self.inner.__exit__(None, None, None)  # these are translated here, not there
        if code == "ResourceLimitExceeded":
            quota = re.search(r"limit '([^']+)' is (\d+) Instances?", message)
            what = f"quota '{quota[1]}' is {quota[2]}" if quota else message.splitlines()[0]
            raise BackendError(
                f"SageMaker refused {self.resource}: the account's {what}. To fix: request an increase in Service "
                "Quotas (https://console.aws.amazon.com/servicequotas/home/services/sagemaker/quotas), or use another "
                "instance type, region or on-demand instead of spot"
            ) from exc
        if code in ("AccessDeniedException", "AccessDenied"):
            action = re.search(r"perform: ([\w:*]+)", message)
            who = re.search(r"User: (\S+)", message)
            raise BackendError(
                f"AWS denied {action[1] if action else self.permission} on {self.resource}"
                f"{f' to {who[1]}' if who else ''}. To fix: allow {action[1] if action else self.permission} for that "
                "identity (and iam:PassRole on sagemaker.role_arn for CreateTrainingJob and CreateModel)"
            ) from exc
        if code == "ValidationException" and "Could not find" not in message:
            keys = [key for field, key in self.keys.items() if field in message]
            where = "" if self.keys is not _SPEC_KEYS else " in the spec"
            raise SpecError(
                f"SageMaker rejected {self.resource}: {message.splitlines()[0] if message else code}. "
                f"To fix: change {' or '.join(keys) if keys else 'the setting it names'}{where}"
            ) from exc
        if code == "ValidationException":  # "Could not find training job ..." is SageMaker's not-found
            raise NotFoundError(f"{self.resource} does not exist. To fix: run 'launcher list --backend sagemaker'") from exc
        return self.inner.__exit__(kind, exc, tb)
