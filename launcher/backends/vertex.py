"""The Vertex AI backend: a job is a Vertex AI CustomJob, driven with the low-level ``aiplatform_v1`` clients.

    launcher train job.yaml --backend vertex      # project, region and bucket: the spec's vertex: section,
                                                   # or LAUNCHER_VERTEX_PROJECT, LAUNCHER_VERTEX_REGION,
                                                   # LAUNCHER_VERTEX_BUCKET, or the profile that 'launcher
                                                   # config from-terraform terraform/gcp' wrote (it also
                                                   # names the service account jobs run as)

What it does, and the decisions that are not obvious:

* **Staging** under ``gs://BUCKET/PREFIX/``: a local dataset goes to ``data/<content digest>/<channel>/``
  (a ``_complete`` marker last, so unchanged data costs one lookup); ``gs://`` data is used where it is.
  The code is the same content-addressed source bundle as SageMaker's (``launcher.bundle``, a
  pip-installable source tree) at ``bundles/<sha256>.tar.gz``, which a prebuilt PyTorch training image
  installs and runs as ``python -m entrypoints.train`` (``python_package_spec``); with
  ``vertex.image_uri`` a custom image runs it (``container_spec``): the image of
  ``container/Dockerfile.train`` (``launcher image build train && launcher image push train`` prints its URI). Outputs go under
  ``base_output_directory`` = ``jobs/<job id>/``, so the job sees ``AIP_MODEL_DIR`` (``.../model/``) and
  ``AIP_CHECKPOINT_DIR`` (``.../checkpoints/``) and reads and writes them through Cloud Storage FUSE;
  every attempt shares them, so attempt N+1 resumes where N stopped.
* **No duplicate jobs.** CreateCustomJob has no request id and no client-chosen name: a create retried
  after a lost answer makes a second job. So each attempt first claims
  ``jobs/<job id>/attempts/a<N>.claim`` with a create-only write (``if_generation_match=0``: of two
  launchers racing, one wins and the other re-attaches), then looks the job up by its labels
  (``launcher_job_id``, ``launcher_attempt``) before creating and again after any error on create, so
  an answer lost after Vertex acted is found, not repeated.
* **Spot**: ``scheduling.strategy = SPOT`` with ``restart_job_on_worker_restart``: a preempted worker is
  restarted by Vertex and resumes from the newest complete checkpoint in ``AIP_CHECKPOINT_DIR``.
* **Secrets** travel as names: the Hub token as a Secret Manager version in ``LAUNCHER_HF_TOKEN_SECRET``,
  read inside the job (``entrypoints.models.hub_token``).
* **Errors** are translated here, once: RESOURCE_EXHAUSTED names the quota and region and where to raise
  it, PERMISSION_DENIED the permission and the service account, INVALID_ARGUMENT the spec key; the rest
  goes through ``launcher.clouds.google_errors``. UNAVAILABLE and DEADLINE_EXCEEDED are retried (tenacity),
  after looking the job up.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from launcher import clouds, profile
from launcher.backends._vertex_serving import VertexServing
from launcher.backends.base import Backend, JobExists, JobInfo, JobRef, JobState, LaunchRequest, followed
from launcher.errors import BackendError, NotFoundError, SpecError

if TYPE_CHECKING:
    from launcher.spec import JobSpec

EXECUTOR_IMAGE = "us-docker.pkg.dev/vertex-ai/training/pytorch-gpu.2-2.py311:latest"
MODULE = "entrypoints.train"
JOB_LABEL, ATTEMPT_LABEL = "launcher_job_id", "launcher_attempt"
CLAIM_STALE_S = 600  # a claim this old with no job behind it was left by a launcher that died
CLAIM_WAIT_S = 30  # how long a launcher that lost the claim waits for the winner's job to appear
CONSOLE = "https://console.cloud.google.com/vertex-ai/locations/{region}/training/{id}/cpu?project={project}"
_CHECKPOINT = re.compile(r"/step-(\d+)/complete\.json$")  # a complete checkpoint's marker (entrypoints/checkpoint.py)
# Words of Vertex's INVALID_ARGUMENT messages -> the spec key that sets them.
_SPEC_KEYS = {
    "machine_type": "compute.accelerator (or compute.instance_type)", "accelerator": "compute.accelerator",
    "service_account": "vertex.service_account", "network": "vertex.network", "image_uri": "vertex.image_uri",
    "executor_image": "vertex.executor_image", "timeout": "compute.max_runtime", "boot_disk": "vertex.boot_disk_gb",
    "replica_count": "compute.nodes", "kms": "vertex.kms_key_name", "base_output_directory": "vertex.staging_bucket",
    "max_wait": "vertex.max_wait",
}


@dataclass(frozen=True)
class Place:
    """Where a job's things go: its project, region and Cloud Storage locations."""

    project: str
    region: str
    bucket: str
    prefix: str

    def uri(self, *parts: str) -> str:
        return "gs://" + "/".join([self.bucket, self.prefix.strip("/"), *parts])

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"


class VertexBackend(VertexServing, Backend):
    """Custom training jobs and online prediction endpoints on Google Cloud Vertex AI (serving: ``_vertex_serving``)."""

    name: ClassVar[str] = "vertex"

    # --- configuration -------------------------------------------------------------------------------
    def _place(self, options: dict[str, Any]) -> Place:
        # Each setting: the spec (or --option), else its environment variables, else the profile.
        env = os.environ
        project = (options.get("project") or env.get("LAUNCHER_VERTEX_PROJECT") or env.get("GOOGLE_CLOUD_PROJECT")
                   or profile.value("vertex", "project"))
        region = (options.get("region") or env.get("LAUNCHER_VERTEX_REGION") or env.get("GOOGLE_CLOUD_REGION")
                  or profile.value("vertex", "region"))
        bucket = options.get("staging_bucket") or env.get("LAUNCHER_VERTEX_BUCKET") or profile.value("vertex", "staging_bucket")
        if not project:
            raise SpecError("no Google Cloud project for Vertex AI. To fix: set vertex.project in the spec, or LAUNCHER_VERTEX_PROJECT, "
                            + profile.hint("vertex"))
        if not region:
            raise SpecError("no Vertex AI region. To fix: set vertex.region in the spec (e.g. us-central1), or LAUNCHER_VERTEX_REGION, "
                            + profile.hint("vertex"))
        if not bucket:
            raise SpecError("no Cloud Storage bucket for the job's data, code and outputs. "
                            "To fix: set vertex.staging_bucket, or LAUNCHER_VERTEX_BUCKET, " + profile.hint("vertex"))
        prefix = options.get("prefix") or "launcher"
        if prefix == "launcher":  # the spec's default: the profile's prefix wins
            prefix = profile.value("vertex", "prefix") or prefix
        return Place(project, region, bucket.removeprefix("gs://").strip("/"), prefix)

    def _ref_place(self, ref: JobRef) -> Place:
        loc = ref.location
        if loc.get("project") and loc.get("region") and loc.get("bucket"):
            return Place(loc["project"], loc["region"], loc["bucket"], loc.get("prefix", "launcher"))
        return self._place(getattr(self, "_options", {}))

    def configured(self) -> bool:
        """A project and credentials the client would find without the network (or an emulator)."""
        env = os.environ
        adc = Path(env.get("CLOUDSDK_CONFIG", Path.home() / ".config" / "gcloud")) / "application_default_credentials.json"
        credentials = env.get("VERTEX_EMULATOR_HOST") or env.get("GOOGLE_APPLICATION_CREDENTIALS") or adc.is_file()
        return bool(credentials and (env.get("LAUNCHER_VERTEX_PROJECT") or env.get("GOOGLE_CLOUD_PROJECT") or profile.value("vertex", "project")))

    def check(self, spec: JobSpec) -> list[str]:
        warnings = super().check(spec)
        options = spec.vertex.model_dump(mode="json")
        self._place(options)
        self._options = options  # launch checks, then looks the job up: with the spec's project and region
        machine = machine_spec(spec.compute)
        if spec.compute.spot and not machine["spot_allowed"]:
            raise SpecError(f"Vertex AI offers no Spot VMs for {machine['machine_type']}. To fix: compute.spot: false, or another accelerator")
        for channel, uri in spec.data.channels().items():
            if uri.startswith("s3://"):
                raise SpecError(f"data.{channel} = '{uri}': Vertex AI reads Cloud Storage and local files. To fix: copy it to gs:// or a local path")
        secret = options.get("hf_token_secret")
        if secret and not re.fullmatch(r"projects/[^/]+/secrets/[^/]+(/versions/[^/]+)?", secret):
            raise SpecError(f"vertex.hf_token_secret = '{secret}' is not a Secret Manager name. "
                            "To fix: write it as projects/PROJECT/secrets/NAME/versions/latest")
        accelerator = spec.compute.accelerator
        if accelerator is not None and machine["gpus"] > accelerator.count:
            warnings.append(f"{machine['machine_type']} has {machine['gpus']} GPUs and the spec asks for {accelerator.count}; "
                            f"training uses {accelerator.count} of them")
        from launcher.memory import check_world

        check_world(spec.train_config(), spec.compute.nodes * (accelerator.count if accelerator else max(1, machine["gpus"])))
        if machine.get("note") and not spec.compute.spot:
            warnings.append(f"{machine['machine_type']}: {machine['note']}")
        return warnings

    # --- the request -----------------------------------------------------------------------------------
    def _staged(self, request: LaunchRequest, place: Place) -> dict[str, str]:
        return request.staged_channels("gs://", place.uri("data"))

    def body(self, request: LaunchRequest, place: Place, staged: dict[str, str], bundle_uri: str | None) -> Any:
        """The CustomJob for ``request`` (what ``--dry-run`` shows, as a dict)."""
        from google.cloud import aiplatform_v1 as v1
        from google.protobuf import duration_pb2

        options = request.backend_options
        compute = request.compute
        machine = machine_spec(compute)
        # One process per GPU asked for; the entrypoint starts torchrun with them, the nodes and the
        # rendezvous from CLUSTER_SPEC and MASTER_ADDR / MASTER_PORT (entrypoints.platform).
        env = {"HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false",
               "LAUNCHER_NPROC_PER_NODE": str(request.processes_per_host)}
        env |= {f"LAUNCHER_CHANNEL_{channel.upper()}": uri for channel, uri in sorted(staged.items())}
        if options.get("hf_token_secret"):
            env["LAUNCHER_HF_TOKEN_SECRET"] = options["hf_token_secret"]
        env_vars = [v1.EnvVar(name=k, value=v) for k, v in env.items()]
        args = request.config.to_args()
        pool = v1.WorkerPoolSpec(
            machine_spec=v1.MachineSpec(machine_type=machine["machine_type"], accelerator_type=machine["accelerator_type"],
                                        accelerator_count=machine["gpus"]),
            replica_count=1,  # worker pool 0 is the chief: one replica, node 0 of the job
            disk_spec=v1.DiskSpec(boot_disk_type="pd-ssd", boot_disk_size_gb=int(options.get("boot_disk_gb") or 100)),
        )
        if bundle_uri is not None:
            pool.python_package_spec = v1.PythonPackageSpec(
                executor_image_uri=executor_image(options), package_uris=[bundle_uri], python_module=MODULE, args=args, env=env_vars)
        else:
            pool.container_spec = v1.ContainerSpec(image_uri=request.image, args=args, env=env_vars)
        pools = [pool]
        if compute.nodes > 1:  # worker pool 1: the other nodes, the same machine and program
            workers = v1.WorkerPoolSpec(pool)
            workers.replica_count = compute.nodes - 1
            pools.append(workers)
        scheduling = v1.Scheduling(timeout=duration_pb2.Duration(seconds=compute.max_runtime), restart_job_on_worker_restart=True,
                                   strategy=v1.Scheduling.Strategy.SPOT if compute.spot else v1.Scheduling.Strategy.ON_DEMAND)
        if compute.spot and options.get("max_wait"):
            scheduling.max_wait_duration = duration_pb2.Duration(seconds=int(options["max_wait"]))
        spec = v1.CustomJobSpec(worker_pool_specs=pools, scheduling=scheduling,
                                base_output_directory=v1.GcsDestination(output_uri_prefix=request.output_uri or place.uri("jobs", request.job_id) + "/"))
        if service_account(options):
            spec.service_account = service_account(options)
        if options.get("network"):
            spec.network = options["network"]
        job = v1.CustomJob(display_name=f"{request.job_id}-a{request.attempt}", job_spec=spec, labels=labels(request))
        if options.get("kms_key_name"):
            job.encryption_spec = v1.EncryptionSpec(kms_key_name=options["kms_key_name"])
        return job

    def describe(self, request: LaunchRequest) -> dict[str, Any]:
        from google.cloud import aiplatform_v1 as v1

        from launcher import bundle

        place = self._place(request.backend_options)
        code = None if request.image else place.uri("bundles", bundle.build().name)
        staged = self._staged(request, place)
        job = self.body(request, place, staged, code)
        uploads = {c: request.channels[c] for c in staged if not request.channels[c].startswith("gs://")}
        hosts = ["workerpool0-0"] + [f"workerpool1-{n}" for n in range(request.compute.nodes - 1)]  # CLUSTER_SPEC's pools
        return {"CreateCustomJob": {"parent": place.parent, "custom_job": v1.CustomJob.to_dict(
            job, use_integers_for_enums=False, always_print_fields_with_no_presence=False)},
            "torchrun (per node)": request.torchrun(hosts, "$MASTER_ADDR", "$MASTER_PORT"), "uploads (unless already there)": {
            **{f"data.{c}": f"{src} -> {staged[c]}" for c, src in uploads.items()}, **({"code": code} if code else {})}}

    # --- training --------------------------------------------------------------------------------------
    def _jobs(self, place: Place, job_id: str | None = None, attempt: int | None = None) -> list[Any]:
        """The CustomJobs with our labels (of one job id, and one attempt), through ListCustomJobs' filter."""
        terms = [f'labels.{JOB_LABEL}="{job_id}"'] if job_id else []
        if attempt is not None:
            terms.append(f'labels.{ATTEMPT_LABEL}="{attempt}"')
        client = clouds.vertex_client("job", place.region)
        with _errors(f"custom jobs in {place.parent}", "aiplatform.customJobs.list", place):
            for retry in _retrying():
                with retry:
                    found = list(client.list_custom_jobs(request={"parent": place.parent, "filter": " AND ".join(terms)}, timeout=60))
        return [job for job in found if JOB_LABEL in job.labels]

    def _ref(self, job: Any, place: Place) -> JobRef:
        location = {"project": place.project, "region": place.region, "bucket": place.bucket, "prefix": place.prefix}
        return JobRef(self.name, job.labels[JOB_LABEL], native_id=job.name, location=location,
                      attempt=int(job.labels.get(ATTEMPT_LABEL, "1")))

    def find(self, job_id: str) -> JobRef | None:
        place = self._place(getattr(self, "_options", {}))
        jobs = self._jobs(place, job_id)
        if not jobs:
            return None
        return self._ref(max(jobs, key=lambda j: int(j.labels.get(ATTEMPT_LABEL, "1"))), place)

    def submit(self, request: LaunchRequest) -> JobRef:
        from launcher import bundle

        place = self._place(request.backend_options)
        existing = self._jobs(place, request.job_id, request.attempt)
        if existing:
            raise JobExists(self._ref(existing[0], place))  # this attempt exists already (a launch that raced ours)
        self._claim(place, request)
        staged = self._staged(request, place)
        for channel, uri in request.channels.items():
            if not uri.startswith("gs://"):
                _upload_dataset(uri, staged[channel])
        code = None
        if not request.image:
            code_bundle = bundle.build()
            code = place.uri("bundles", code_bundle.name)
            _upload_once(code, code_bundle.data)
        job = self.body(request, place, staged, code)
        client = clouds.vertex_client("job", place.region)
        with _errors(f"custom job {job.display_name}", "aiplatform.customJobs.create", place, job):
            for retry in _retrying():
                with retry:
                    try:
                        return self._ref(client.create_custom_job(parent=place.parent, custom_job=job, timeout=60), place)
                    except Exception as exc:
                        landed = self._jobs(place, request.job_id, request.attempt) if _transient(exc) else []
                        if landed:
                            return self._ref(landed[0], place)  # created; the answer was lost
                        raise
        raise AssertionError("unreachable")  # pragma: no cover - _retrying re-raises

    def _claim(self, place: Place, request: LaunchRequest) -> None:
        """Claim this attempt with a create-only object, so two launchers racing create one job: the
        loser re-attaches to the winner's job (or is told to wait while the winner stages)."""
        from google.api_core import exceptions as api

        uri = place.uri("jobs", request.job_id, "attempts", f"a{request.attempt}.claim")
        bucket, _, key = uri.removeprefix("gs://").partition("/")
        blob = clouds.gcs_client(place.project).bucket(bucket).blob(key)
        with clouds.google_errors(uri, "storage.objects.create", missing=f"create the bucket gs://{bucket} or fix vertex.staging_bucket"):
            try:
                blob.upload_from_string(f"{time.time():.0f}\n", if_generation_match=0)
                return
            except api.PreconditionFailed:
                pass
            deadline = time.monotonic() + CLAIM_WAIT_S
            while time.monotonic() < deadline:
                landed = self._jobs(place, request.job_id, request.attempt)
                if landed:
                    raise JobExists(self._ref(landed[0], place))
                time.sleep(2)
            blob.reload()
            age = time.time() - blob.updated.timestamp()
            if age < CLAIM_STALE_S:
                raise BackendError(f"another launcher is submitting attempt {request.attempt} of job '{request.job_id}' "
                                   f"(claimed {age:.0f} s ago). To fix: wait a minute, then run 'launcher status {request.job_id}'")
            try:  # its launcher died before creating the job: take the claim over
                blob.upload_from_string(f"{time.time():.0f}\n", if_generation_match=blob.generation)
            except api.PreconditionFailed:
                raise BackendError(f"another launcher took over attempt {request.attempt} of job '{request.job_id}' just now. "
                                   f"To fix: run 'launcher status {request.job_id}'") from None

    def _get(self, ref: JobRef) -> Any:
        name = ref.native_id or (self.find(ref.job_id) or ref).native_id
        if not name:
            raise NotFoundError(f"no Vertex AI custom job for '{ref.job_id}'. To fix: run 'launcher list --backend vertex'")
        place = self._ref_place(ref)
        client = clouds.vertex_client("job", place.region)
        with _errors(f"custom job {name}", "aiplatform.customJobs.get", place):
            for retry in _retrying():
                with retry:
                    return client.get_custom_job(name=name, timeout=30)
        raise AssertionError("unreachable")  # pragma: no cover

    def status(self, ref: JobRef) -> JobInfo:
        job = self._get(ref)
        place = self._ref_place(ref)
        state, message = job_state(job)
        numeric = job.name.rsplit("/", 1)[-1]
        base = job.job_spec.base_output_directory.output_uri_prefix.rstrip("/")
        info = JobInfo(
            job_id=ref.job_id, backend=self.name, state=state, name=ref.job_id.rsplit("-", 2)[0],
            created_at=_iso(job.create_time), updated_at=_iso(job.update_time), message=message,
            output=f"{base}/model/" if state is JobState.SUCCEEDED else "",
            attempt=int(job.labels.get(ATTEMPT_LABEL, ref.attempt)), native_id=job.name,
            location={"project": place.project, "region": place.region, "bucket": place.bucket, "prefix": place.prefix},
            extra={"display_name": job.display_name, "vertex_state": job.state.name,
                   "logs": f'Cloud Logging: resource.type="ml_job" resource.labels.job_id="{numeric}"',
                   "console": CONSOLE.format(region=place.region, id=numeric, project=place.project),
                   "checkpoints": f"{base}/checkpoints/"},
        )
        info.checkpoint_step = _newest_checkpoint(f"{base}/checkpoints/", place)
        return info

    def logs(self, ref: JobRef, follow: bool = False) -> Iterator[str]:
        """The job's log lines from Cloud Logging (every worker and restart), oldest first; with ``follow``,
        new lines until the job ends (then whatever it wrote last)."""
        job = self._get(ref)
        place = self._ref_place(ref)
        numeric = job.name.rsplit("/", 1)[-1]
        client = clouds.logging_client()
        base = f'resource.type="ml_job" AND resource.labels.job_id="{numeric}"'
        cursor = {"since": "", "seen": set()}  # the newest timestamp read, and the entries read at it

        def read() -> Iterator[str]:
            query = base + (f' AND timestamp>="{cursor["since"]}"' if cursor["since"] else "")
            with _errors(f"the logs of {job.name}", "logging.logEntries.list", place):
                for retry in _retrying():
                    with retry:
                        entries = list(client.list_log_entries(request={"resource_names": [f"projects/{place.project}"],
                                                                         "filter": query, "order_by": "timestamp asc"}, timeout=60))
            for entry in entries:
                stamp = _rfc3339(entry.timestamp)
                if (stamp, entry.insert_id) in cursor["seen"]:
                    continue
                if stamp != cursor["since"]:
                    cursor.update(since=stamp, seen=set())
                cursor["seen"].add((stamp, entry.insert_id))
                text = entry.text_payload or (dict(entry.json_payload).get("message", "") if entry.json_payload else "")
                yield text.rstrip("\n")

        return followed(read, lambda: self.status(ref).state.active, follow)

    def cancel(self, ref: JobRef) -> JobInfo:
        info = self.status(ref)
        if info.state.active and info.state is not JobState.STOPPING:
            place = self._ref_place(ref)
            with _errors(f"custom job {info.native_id}", "aiplatform.customJobs.cancel", place):
                clouds.vertex_client("job", place.region).cancel_custom_job(name=info.native_id, timeout=30)
        return self.status(ref)

    def list(self, state: JobState | None = None) -> list[JobInfo]:
        place = self._place(getattr(self, "_options", {}))
        latest: dict[str, Any] = {}
        for job in self._jobs(place):
            job_id = job.labels[JOB_LABEL]
            if job_id not in latest or int(job.labels.get(ATTEMPT_LABEL, "1")) > int(latest[job_id].labels.get(ATTEMPT_LABEL, "1")):
                latest[job_id] = job
        found = [self.status(self._ref(job, place)) for job in latest.values()]
        return sorted((i for i in found if state is None or i.state is state), key=lambda i: i.created_at, reverse=True)


# --- pure pieces (tested on their own) ----------------------------------------------------------------
def machine_spec(compute) -> dict[str, Any]:
    """machine_type, accelerator_type (aiplatform_v1's enum name), gpus and spot_allowed for the spec's
    compute: the machine type ``launcher plan`` prices, the GPU kind's name from the GPU catalog."""
    from launcher import catalog
    from launcher.plan import machine_for

    entry = machine_for("vertex", compute)
    kind = entry.get("gpu") or (compute.accelerator.kind if compute.accelerator else None)
    accelerator = catalog.load("gpus")["kinds"].get(kind, {}).get("vertex_accelerator") if kind else None
    if kind and not accelerator:
        raise SpecError(f"Vertex AI has no {kind} GPUs. To fix: choose an accelerator Vertex offers (L4, A100, A100-80GB, H100, H200)")
    gpus = entry["gpus"] or (compute.accelerator.count if compute.accelerator else 0)
    return {"machine_type": entry["instance_type"], "accelerator_type": accelerator or "ACCELERATOR_TYPE_UNSPECIFIED",
            "gpus": gpus, "spot_allowed": entry.get("spot_allowed", True), "note": entry.get("note", "")}


def labels(request: LaunchRequest) -> dict[str, str]:
    """The job's labels: the spec's tags, lowercased into Vertex's label alphabet, and ours."""
    found = {_label(k, key=True): _label(str(v)) for k, v in request.tags.items() if k != "launcher-job-id"}
    return {**found, JOB_LABEL: request.job_id, ATTEMPT_LABEL: str(request.attempt)}


def _label(text: str, key: bool = False) -> str:
    cleaned = re.sub(r"[^a-z0-9_-]", "_", text.lower())[:63]
    return ("t_" + cleaned)[:63] if key and not cleaned[:1].isalpha() else cleaned


def service_account(options: dict[str, Any]) -> str | None:
    """The service account a job or endpoint runs as: the spec's (or --option's), else the profile's, else
    none (Vertex AI's default for the project)."""
    return options.get("service_account") or profile.value("vertex", "service_account")


def executor_image(options: dict[str, Any]) -> str:
    return options.get("executor_image") or os.environ.get("LAUNCHER_VERTEX_EXECUTOR_IMAGE") or EXECUTOR_IMAGE


def job_state(job: Any) -> tuple[JobState, str]:
    """Vertex AI's JobState as the shared state and a message."""
    state = job.state.name.removeprefix("JOB_STATE_")
    if state in ("QUEUED", "PENDING", "UNSPECIFIED", "PAUSED"):
        return JobState.PENDING, state.lower()
    if state in ("RUNNING", "UPDATING"):
        return JobState.RUNNING, ""
    if state == "SUCCEEDED":
        return JobState.SUCCEEDED, ""
    if state == "CANCELLING":
        return JobState.STOPPING, "cancel requested"
    if state == "CANCELLED":
        return JobState.CANCELLED, "cancelled; submit it again to resume from its checkpoint"
    if state == "EXPIRED":
        return JobState.INTERRUPTED, "Vertex AI gave up waiting for capacity or time ran out. To fix: submit it again to resume"
    reason = (job.error.message or "no reason recorded").strip().splitlines()[0] if job.error else "no reason recorded"
    if "timeout" in reason.lower() or "time limit" in reason.lower():
        return JobState.INTERRUPTED, f"{reason}. To fix: submit it again to resume, or raise compute.max_runtime"
    return JobState.FAILED, reason


def _newest_checkpoint(uri: str, place: Place) -> int | None:
    bucket, _, prefix = uri.removeprefix("gs://").partition("/")
    with clouds.google_errors(uri, "storage.objects.list"):
        names = [blob.name for blob in clouds.gcs_client(place.project).list_blobs(bucket, prefix=prefix)]
    steps = [int(m[1]) for m in map(_CHECKPOINT.search, names) if m]
    return max(steps) if steps else None


def _upload_dataset(source: str, prefix_uri: str) -> None:
    """A local dataset under its content-addressed prefix (a folder's files flattened into one level)."""
    from launcher.data import dataset_files

    root = Path(source)
    _upload_files([(path, "__".join(path.relative_to(root).parts) if root.is_dir() else path.name) for path in dataset_files(root)],
                  prefix_uri)


def _upload_dataset_folder(folder: Path, prefix_uri: str) -> None:
    """A model dir under its content-addressed prefix, relative paths kept."""
    _upload_files([(path, path.relative_to(folder).as_posix()) for path in sorted(p for p in folder.rglob("*") if p.is_file())],
                  prefix_uri)


def _upload_files(files: list[tuple[Path, str]], prefix_uri: str) -> None:
    """Upload (file, name) pairs under ``prefix_uri`` once: the ``_complete`` marker, written last, says
    every file is there, so a later upload of the same content is one lookup."""
    bucket_name, _, prefix = prefix_uri.removeprefix("gs://").partition("/")
    bucket = clouds.gcs_client().bucket(bucket_name)
    with clouds.google_errors(prefix_uri, "storage.objects.create", missing=f"create the bucket gs://{bucket_name}"):
        if bucket.blob(prefix + "_complete").exists():
            return
        for path, name in files:
            bucket.blob(prefix + name).upload_from_filename(str(path))
        bucket.blob(prefix + "_complete").upload_from_string(b"")


def _upload_once(uri: str, data: bytes) -> None:
    from google.api_core import exceptions as api

    bucket, _, key = uri.removeprefix("gs://").partition("/")
    with clouds.google_errors(uri, "storage.objects.create", missing=f"create the bucket gs://{bucket}"):
        try:  # content-addressed: the same name is the same bytes, so create-only
            clouds.gcs_client().bucket(bucket).blob(key).upload_from_string(data, content_type="application/gzip", if_generation_match=0)
        except api.PreconditionFailed:
            pass


def _utc(value) -> dt.datetime:
    """A proto Timestamp (or the datetime proto-plus gives for one) as an aware UTC datetime."""
    stamp = value if isinstance(value, dt.datetime) else value.ToDatetime(tzinfo=dt.timezone.utc)
    return stamp.astimezone(dt.timezone.utc)


def _iso(value) -> str:
    return _utc(value).isoformat(timespec="seconds").replace("+00:00", "Z") if value else ""


def _rfc3339(value) -> str:
    return _utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _transient(exc: BaseException) -> bool:
    """A failure a retry can mend: UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, a dropped connection."""
    from google.api_core import exceptions as api

    return isinstance(exc, api.ServiceUnavailable | api.DeadlineExceeded | api.InternalServerError | api.RetryError)


def _retrying():
    import tenacity

    return tenacity.Retrying(retry=tenacity.retry_if_exception(_transient), stop=tenacity.stop_after_attempt(6),
                             wait=tenacity.wait_exponential(multiplier=0.2, max=5), reraise=True)


class _errors:
    """Vertex AI's errors at the border, with the quota, permission or spec key they are about; the rest
    through ``clouds.google_errors``."""

    def __init__(self, resource: str, permission: str, place: Place, job: Any = None, keys: dict[str, str] | None = None):
        self.resource, self.permission, self.place, self.job = resource, permission, place, job
        self.keys = _SPEC_KEYS if keys is None else keys  # words of the message -> the spec key (or deploy option) that sets them
        self.inner = clouds.google_errors(resource, permission, missing="run 'launcher list --backend vertex'")

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, kind, exc, tb):
        import sys

        api = sys.modules.get("google.api_core.exceptions")
        if exc is None or isinstance(exc, JobExists) or api is None:
            return self.inner.__exit__(kind, exc, tb)
        message = str(getattr(exc, "message", "") or exc).strip()
        first = message.splitlines()[0] if message else type(exc).__name__
        if isinstance(exc, api.ResourceExhausted | api.PermissionDenied | api.Forbidden | api.InvalidArgument | api.BadRequest):
            self.inner.__exit__(None, None, None)  # these are translated here, not there
        if isinstance(exc, api.ResourceExhausted):
            quota = re.search(r"(aiplatform\.googleapis\.com/[\w.-]+)", message)
            what = f"quota {quota[1]}" if quota else "a quota"
            raise BackendError(
                f"Vertex AI refused {self.resource}: {what} in {self.place.region} is exhausted ({first}). To fix: request "
                f"more at https://console.cloud.google.com/iam-admin/quotas?project={self.place.project} (filter by the "
                "quota's name and region), or use another region, accelerator or spot"
            ) from exc
        if isinstance(exc, api.PermissionDenied | api.Forbidden):
            permission = re.search(r"[Pp]ermission '?([\w.]+)'? denied", message) or re.search(r"(aiplatform\.\w+\.\w+|iam\.\w+\.\w+)", message)
            account = (self.job.job_spec.service_account if self.job is not None else "") or "the project's default service account"
            raise BackendError(
                f"Google Cloud denied {permission[1] if permission else self.permission} on {self.resource} ({first}). To fix: grant "
                f"it to the account 'gcloud auth list' shows as active (Vertex AI User has it); the job itself runs as {account}, "
                "which needs iam.serviceAccounts.actAs for you and storage access for it"
            ) from exc
        if isinstance(exc, api.InvalidArgument | api.BadRequest):
            keys = list(dict.fromkeys(key for word, key in self.keys.items() if word in message.lower().replace(" ", "_")))
            keys = [key for key in keys if not any(key != other and key in other for other in keys)]
            where = " in the spec" if self.keys is _SPEC_KEYS else ""
            raise SpecError(
                f"Vertex AI rejected {self.resource}: {first}. "
                f"To fix: change {' or '.join(keys) if keys else 'the setting it names'}{where}"
            ) from exc
        return self.inner.__exit__(kind, exc, tb)
