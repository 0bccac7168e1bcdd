"""The Vertex AI backend's request and its border, without a running job: the CustomJob it would send
(every field the spec sets, secrets by name only), refusals before anything is staged, the Hub token
read from Secret Manager inside the job, Vertex's errors in plain words, and its states."""

from __future__ import annotations

import json

import pytest
from conftest import summary_records, write_jsonl

from launcher import api
from launcher.backends.base import JobState
from launcher.errors import BackendError, SpecError

SECRET = "hf_THIS-VALUE-MUST-NEVER-TRAVEL"


@pytest.fixture
def vertex_env(monkeypatch):
    monkeypatch.setenv("LAUNCHER_VERTEX_PROJECT", "test-project")
    monkeypatch.setenv("LAUNCHER_VERTEX_REGION", "us-central1")
    monkeypatch.setenv("LAUNCHER_VERTEX_BUCKET", "vx-bucket")


@pytest.fixture
def spec_file(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", summary_records(24))

    def make(vertex=None, compute=None, name="vx", **top):
        spec = {"name": name, "data": {"train": str(tmp_path / "train.jsonl")}, "training": {"epochs": 2, "lora_r": 8},
                "compute": {"accelerator": "A100-80GB:1", "spot": True, "max_runtime": "2h", **(compute or {})},
                "vertex": vertex or {}, "tags": {"team": "Fin Ops"}, **top}
        path = tmp_path / f"{name}.yaml"
        path.write_text(json.dumps(spec))
        return path

    return make


def dry_run(path) -> dict:
    request, backend, _ = api.request(path, backend="vertex")
    return backend.describe(request)


def test_the_custom_job_carries_every_setting_and_no_secret(vertex_env, spec_file):
    path = spec_file(vertex={"service_account": "trainer@test-project.iam.gserviceaccount.com",
                             "network": "projects/123/global/networks/private", "boot_disk_gb": 200, "max_wait": 7200,
                             "hf_token_secret": "projects/test-project/secrets/hf-token/versions/latest",
                             "kms_key_name": "projects/test-project/locations/us-central1/keyRings/r/cryptoKeys/k"},
                     hf_token_env="HF_TOKEN")
    described = dry_run(path)
    call = described["CreateCustomJob"]
    job = call["custom_job"]
    assert call["parent"] == "projects/test-project/locations/us-central1"
    job_id = job["labels"]["launcher_job_id"]
    assert job["display_name"] == f"{job_id}-a1" and job["labels"]["launcher_attempt"] == "1" and job["labels"]["team"] == "fin_ops"
    spec = job["job_spec"]
    (pool,) = spec["worker_pool_specs"]
    assert pool["machine_spec"] == {"machine_type": "a2-ultragpu-1g", "accelerator_type": "NVIDIA_A100_80GB", "accelerator_count": 1}
    assert pool["replica_count"] == "1" and pool["disk_spec"] == {"boot_disk_type": "pd-ssd", "boot_disk_size_gb": 200}
    package = pool["python_package_spec"]
    assert package["python_module"] == "entrypoints.train" and package["executor_image_uri"].startswith("us-docker.pkg.dev/vertex-ai/training/pytorch-gpu")
    assert package["package_uris"] == [described["uploads (unless already there)"]["code"]]
    assert package["package_uris"][0].startswith("gs://vx-bucket/launcher/bundles/")
    assert "--epochs=2" in package["args"] and "--lora_r=8" in package["args"]
    env = {e["name"]: e["value"] for e in package["env"]}
    assert env["LAUNCHER_HF_TOKEN_SECRET"] == "projects/test-project/secrets/hf-token/versions/latest"
    assert env["LAUNCHER_CHANNEL_TRAIN"].startswith("gs://vx-bucket/launcher/data/") and env["LAUNCHER_CHANNEL_TRAIN"].endswith("/train/")
    assert spec["scheduling"] == {"timeout": "7200s", "restart_job_on_worker_restart": True, "strategy": "SPOT", "max_wait_duration": "7200s"}
    assert spec["base_output_directory"] == {"output_uri_prefix": f"gs://vx-bucket/launcher/jobs/{job_id}/"}
    assert spec["service_account"] == "trainer@test-project.iam.gserviceaccount.com"
    assert spec["network"] == "projects/123/global/networks/private"
    assert job["encryption_spec"]["kms_key_name"].endswith("cryptoKeys/k")
    assert SECRET not in json.dumps(described)


def test_a_custom_image_runs_as_a_container_and_on_demand_without_a_bundle(vertex_env, spec_file):
    path = spec_file(vertex={"image_uri": "us-central1-docker.pkg.dev/test-project/ml/launcher:1"}, compute={"spot": False, "accelerator": "H100:1"})
    described = dry_run(path)
    spec = described["CreateCustomJob"]["custom_job"]["job_spec"]
    (pool,) = spec["worker_pool_specs"]
    assert "python_package_spec" not in pool and pool["container_spec"]["image_uri"].endswith("launcher:1")
    assert pool["machine_spec"]["machine_type"] == "a3-highgpu-1g" and pool["machine_spec"]["accelerator_type"] == "NVIDIA_H100_80GB"
    assert spec["scheduling"]["strategy"] == "ON_DEMAND" and "code" not in described["uploads (unless already there)"]


@pytest.mark.parametrize(("change", "shown"), [
    ({"compute": {"accelerator": "A10G:1"}}, "Vertex AI machine type has A10G:1"),
    ({"data": {"train": "s3://bucket/train.jsonl"}}, "Vertex AI reads Cloud Storage and local files"),
    ({"vertex": {"hf_token_secret": "arn:aws:secretsmanager:us-east-1:1:secret:x"}}, "is not a Secret Manager name"),
])
def test_what_vertex_cannot_run_is_refused_before_anything_is_staged(vertex_env, spec_file, change, shown):
    path = spec_file(**{k: v for k, v in change.items() if k in ("vertex", "compute")})
    if "data" in change:
        spec = json.loads(path.read_text())
        spec["data"] = change["data"]
        path.write_text(json.dumps(spec))
    with pytest.raises(SpecError, match=shown):
        api.launch(path, backend="vertex")  # refused in check(): no client is even built


def test_a_missing_project_or_bucket_says_where_to_set_it(spec_file, monkeypatch):
    for name in ("LAUNCHER_VERTEX_PROJECT", "GOOGLE_CLOUD_PROJECT", "LAUNCHER_VERTEX_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LAUNCHER_VERTEX_REGION", "us-central1")
    with pytest.raises(SpecError, match="vertex.project .*LAUNCHER_VERTEX_PROJECT"):
        api.launch(spec_file(), backend="vertex")
    monkeypatch.setenv("LAUNCHER_VERTEX_PROJECT", "p")
    with pytest.raises(SpecError, match="vertex.staging_bucket, or LAUNCHER_VERTEX_BUCKET"):
        api.launch(spec_file(), backend="vertex")


def test_the_job_reads_the_hub_token_from_secret_manager(grpc_fake, monkeypatch):
    from google.cloud.secretmanager_v1 import types

    from entrypoints import models
    from launcher.spec import TrainConfig
    from launcher.errors import NotFoundError

    asked = []

    def access(request, context):
        asked.append(request.name)
        if "missing" in request.name:
            context.abort(__import__("grpc").StatusCode.NOT_FOUND, f"Secret [{request.name}] not found or has no versions.")
        return types.AccessSecretVersionResponse(name=request.name, payload=types.SecretPayload(data=SECRET.encode()))

    host = grpc_fake("google.cloud.secretmanager.v1.SecretManagerService",
                     {"AccessSecretVersion": (types.AccessSecretVersionRequest, types.AccessSecretVersionResponse, access)})
    monkeypatch.setenv("SECRETMANAGER_EMULATOR_HOST", host)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("LAUNCHER_HF_TOKEN_SECRET", "projects/p/secrets/hf-token")
    assert models.hub_token(TrainConfig()) == SECRET and asked == ["projects/p/secrets/hf-token/versions/latest"]
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("LAUNCHER_HF_TOKEN_SECRET", "projects/p/secrets/missing/versions/3")
    with pytest.raises(NotFoundError, match="correct vertex.hf_token_secret"):
        models.hub_token(TrainConfig())


def _job(state: str, message: str = ""):
    from google.cloud import aiplatform_v1 as v1
    from google.rpc import status_pb2

    job = v1.CustomJob(state=getattr(v1.JobState, f"JOB_STATE_{state}"))
    if message:
        job.error = status_pb2.Status(code=9, message=message)
    return job


@pytest.mark.parametrize(("state", "message", "expected"), [
    ("QUEUED", "", JobState.PENDING), ("PENDING", "", JobState.PENDING), ("RUNNING", "", JobState.RUNNING),
    ("SUCCEEDED", "", JobState.SUCCEEDED), ("CANCELLING", "", JobState.STOPPING), ("CANCELLED", "", JobState.CANCELLED),
    ("EXPIRED", "", JobState.INTERRUPTED),
    ("FAILED", "The replica workerpool0-0 exited with a non-zero status of 1.", JobState.FAILED),
])
def test_vertex_states_map_onto_the_shared_ones(state, message, expected):
    from launcher.backends.vertex import job_state

    got, said = job_state(_job(state, message))
    assert got is expected
    if message:
        assert said == message


@pytest.mark.parametrize(("error", "shown"), [
    ("ResourceExhausted", "quota aiplatform.googleapis.com/custom_model_training_nvidia_a100_80gb_gpus in us-central1 is exhausted"),
    ("PermissionDenied", "denied aiplatform.customJobs.create on custom job vx-a1"),
    ("InvalidArgument", "To fix: change compute.accelerator (or compute.instance_type) in the spec"),
    ("NotFound", "does not exist"),
])
def test_vertex_errors_are_one_line_naming_the_quota_permission_or_spec_key(error, shown):
    from google.api_core import exceptions

    from launcher.backends.vertex import Place, _errors
    from launcher.errors import LauncherError

    messages = {
        "ResourceExhausted": "The following quota metrics exceed quota limits: aiplatform.googleapis.com/custom_model_training_nvidia_a100_80gb_gpus",
        "PermissionDenied": "Permission 'aiplatform.customJobs.create' denied on resource '//aiplatform.googleapis.com/projects/p/locations/us-central1' (or it may not exist).",
        "InvalidArgument": "Machine type \"a2-ultragpu-1g\" is not supported with accelerator NVIDIA_L4.",
        "NotFound": "CustomJob does not exist.",
    }
    with pytest.raises(LauncherError) as caught, _errors("custom job vx-a1", "aiplatform.customJobs.create", Place("p", "us-central1", "b", "launcher")):
        raise getattr(exceptions, error)(messages[error])
    text = str(caught.value)
    assert shown in text and "\n" not in text
    assert isinstance(caught.value, SpecError if error == "InvalidArgument" else (BackendError if error != "NotFound" else LauncherError))


def test_several_nodes_are_a_chief_pool_and_a_worker_pool_running_torchrun(vertex_env, spec_file):
    # 24 GPUs: a step of 4 rows x 6 micro-batches splits evenly over them.
    described = dry_run(spec_file(compute={"accelerator": "H100:8", "nodes": 3}, training={"gradient_accumulation_steps": 6}))
    chief, workers = described["CreateCustomJob"]["custom_job"]["job_spec"]["worker_pool_specs"]
    assert (chief["replica_count"], workers["replica_count"]) == ("1", "2")
    for pool in (chief, workers):
        assert pool["machine_spec"] == {"machine_type": "a3-highgpu-8g", "accelerator_type": "NVIDIA_H100_80GB", "accelerator_count": 8}
        assert {e["name"]: e["value"] for e in pool["python_package_spec"]["env"]}["LAUNCHER_NPROC_PER_NODE"] == "8"
    assert chief["python_package_spec"] == workers["python_package_spec"]
    torchrun = described["torchrun (per node)"]
    assert torchrun["processes"] == 24 and torchrun["command"] == (
        "python -m torch.distributed.run --nnodes=3 --node-rank=0 --nproc-per-node=8 --master-addr=$MASTER_ADDR "
        "--master-port=$MASTER_PORT --module entrypoints.train ...")
