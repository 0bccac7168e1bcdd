"""Vertex AI deploy end to end through the CLI, against the Vertex fake (tests/fakes/vertex_serving.py: the
real aiplatform_v1 Model/Endpoint/Prediction clients over gRPC; the deployed container is the real serving
entrypoint on this machine) and gcp-storage-emulator: deploy a finished Vertex job by id, invoke, capture
records in GCS written by our container (one per request), re-deploy = re-attach, a new model replaces the
old one, streaming through StreamRawPredict, undeploy removes everything; the local contract check failing
fast with nothing created; quota and permission refusals in one line; bad options creating nothing."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from launcher.cli.main import app

JOB_ID = "claims-0123456789ab-run1"
IMAGE = "us-docker.pkg.dev/test-project/launcher/serve:1"
PROMPT = "Client Bob Chen, age 40, risk moderate, cash $5,000."


def cli(*args: str):
    return CliRunner().invoke(app, list(map(str, args)), catch_exceptions=False)


@pytest.fixture
def gcp(vertex_fake, monkeypatch):
    from launcher import clouds

    clouds.gcs_client().create_bucket("vx-bucket")
    monkeypatch.setenv("LAUNCHER_VERTEX_PROJECT", "test-project")
    monkeypatch.setenv("LAUNCHER_VERTEX_REGION", "us-central1")
    monkeypatch.setenv("LAUNCHER_VERTEX_BUCKET", "vx-bucket")
    monkeypatch.setenv("LAUNCHER_VERTEX_SERVING_IMAGE", IMAGE)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parents[1]))
    monkeypatch.setenv("LAUNCHER_DEPLOY_TIMEOUT", "120")
    return vertex_fake


def finished_vertex_job(fake, model_dir: Path) -> str:
    """A SUCCEEDED CustomJob with our labels whose model dir (``<base>/model/``) holds ``model_dir``."""
    from google.cloud import aiplatform_v1 as v1

    from launcher import clouds

    base = f"gs://vx-bucket/launcher/jobs/{JOB_ID}/"
    bucket = clouds.gcs_client().bucket("vx-bucket")
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        bucket.blob(f"launcher/jobs/{JOB_ID}/model/{path.relative_to(model_dir).as_posix()}").upload_from_filename(str(path))
    pool = v1.WorkerPoolSpec(machine_spec=v1.MachineSpec(machine_type="n1-standard-4"), replica_count=1,
                             container_spec=v1.ContainerSpec(image_uri=IMAGE, command=[sys.executable, "-c", "pass"]))
    job = v1.CustomJob(display_name=f"{JOB_ID}-a1", labels={"launcher_job_id": JOB_ID, "launcher_attempt": "1"},
                       job_spec=v1.CustomJobSpec(worker_pool_specs=[pool], base_output_directory=v1.GcsDestination(output_uri_prefix=base)))
    created = clouds.vertex_client("job", "us-central1").create_custom_job(parent="projects/test-project/locations/us-central1", custom_job=job)
    assert fake.wait(created.name) == "JOB_STATE_SUCCEEDED"
    return base + "model/"


def objects(prefix: str) -> list[str]:
    from launcher import clouds

    return [b.name for b in clouds.gcs_client().list_blobs("vx-bucket", prefix=prefix)]


@pytest.mark.slow
def test_vertex_deploy_lifecycle_through_the_cli(gcp, finished_job, tmp_path):
    from launcher import clouds
    from launcher.capture import parse

    artifact = finished_vertex_job(gcp, finished_job / "model")
    deployed = cli("deploy", JOB_ID, "--backend", "vertex", "--json")
    assert deployed.exit_code == 0, deployed.output
    endpoint = json.loads(deployed.stdout)
    assert endpoint["name"] == JOB_ID and endpoint["state"] == "InService" and endpoint["backend"] == "vertex"
    assert endpoint["model"] == artifact  # the job's own model dir: nothing re-uploaded
    assert not objects("launcher/models/")
    resource = f"projects/test-project/locations/us-central1/endpoints/{JOB_ID}"
    described = clouds.vertex_client("endpoint", "us-central1").get_endpoint(name=resource)
    (deployed_model,) = described.deployed_models
    assert dict(described.traffic_split) == {deployed_model.id: 100}
    machine = deployed_model.dedicated_resources.machine_spec
    assert machine.accelerator_type.name == "NVIDIA_L4" and machine.accelerator_count == 1
    model = clouds.vertex_client("model", "us-central1").get_model(name=deployed_model.model)
    assert model.container_spec.image_uri == IMAGE and model.container_spec.predict_route == "/predict"
    env = {e.name: e.value for e in model.container_spec.env}
    assert env["LAUNCHER_CAPTURE"] == "gs://vx-bucket/launcher/capture" and not any("KEY" in k or "SECRET" in k for k in env)

    answers = []
    for _ in range(2):
        answer = cli("invoke", JOB_ID, PROMPT, "--max-tokens", "8", "--json")
        assert answer.exit_code == 0, answer.output
        answers.append(json.loads(answer.stdout)["choices"][0]["message"]["content"])
    assert answers[0] == answers[1]  # greedy
    refused = cli("invoke", JOB_ID, PROMPT, "--max-tokens", "100000")
    assert refused.exit_code == 2 and "above this endpoint's cap of 1024" in refused.stderr, refused.stderr
    streamed = cli("invoke", JOB_ID, PROMPT, "--max-tokens", "8", "--stream", "--json")  # StreamRawPredict
    assert streamed.exit_code == 0, streamed.output
    pieces = [json.loads(line)["text"] for line in streamed.stdout.splitlines()]
    assert len(pieces) > 1 and "".join(pieces) == answers[0]  # piece by piece, the same greedy answer

    again = cli("deploy", JOB_ID, "--backend", "vertex", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["reattached"] is True
    kinds = [kind for kind, _ in gcp.serving.calls]
    assert kinds.count("UploadModel") == 1 and kinds.count("CreateEndpoint") == 1 and kinds.count("DeployModel") == 1

    # A new model under the same name: deployed beside the old one with all the traffic, then the old one goes.
    newer = tmp_path / "newer-model"
    shutil.copytree(finished_job / "model", newer)
    (newer / "notes.txt").write_text("a retrained model\n")
    updated = cli("deploy", newer, "--backend", "vertex", "--name", JOB_ID, "--json")
    assert updated.exit_code == 0, updated.output
    now = clouds.vertex_client("endpoint", "us-central1").get_endpoint(name=resource)
    assert len(now.deployed_models) == 1 and now.deployed_models[0].id != deployed_model.id
    assert len(gcp.serving.models) == 1 and json.loads(updated.stdout)["model"].startswith("gs://vx-bucket/launcher/models/")
    assert cli("invoke", JOB_ID, PROMPT, "--max-tokens", "8").exit_code == 0

    listed = json.loads(cli("endpoints", "--json").stdout)
    assert [(e["name"], e["backend"], e["state"]) for e in listed] == [(JOB_ID, "vertex", "InService")]

    stopped = cli("undeploy", JOB_ID, "--json")
    assert stopped.exit_code == 0 and json.loads(stopped.stdout)["state"] == "Stopped"
    assert gcp.serving.endpoints == {} and gcp.serving.models == {}
    keys = objects(f"launcher/capture/{JOB_ID}/AllTraffic/")
    assert keys and all(re.fullmatch(rf"launcher/capture/{JOB_ID}/AllTraffic/\d{{4}}/\d\d/\d\d/\d\d/[\w-]+\.jsonl", k) for k in keys)
    bucket = clouds.gcs_client().bucket("vx-bucket")
    records = [parse(line) for k in keys for line in bucket.blob(k).download_as_text().splitlines()]
    assert len(records) == 5 and sorted(r.status for r in records) == [200, 200, 200, 200, 400]  # one per request
    bodies = [json.loads(r.input_bytes()) for r in records]
    assert sum(b.get("stream") is True for b in bodies) == 1  # the raw chat body of the stream, its answer whole
    assert all((b["messages"] if "messages" in b else b["instances"][0]["messages"])[0]["content"] == PROMPT for b in bodies)
    assert cli("invoke", JOB_ID, PROMPT).exit_code == 2


def test_the_local_contract_check_fails_fast_and_creates_nothing(gcp, tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")  # an adapter naming no base model
    failed = cli("deploy", tmp_path, "--backend", "vertex", "--name", "broken")
    assert failed.exit_code == 1
    assert "serving contract check" in failed.stderr and "nothing was created on vertex" in failed.stderr
    assert "names no base model" in failed.stderr
    assert gcp.serving.calls == [] and objects("") == []


def test_quota_and_permission_refusals_are_one_line(gcp, tmp_path):
    """A DeployModel past the serving quota, and a caller without aiplatform.endpoints.deploy: one line
    naming the quota (and where to raise it) or the permission; no model is left serving."""
    (tmp_path / "config.json").write_text("{}")
    gcp.refuse_serving_quota("NVIDIA_L4", limit=0)
    quota = cli("deploy", tmp_path, "--backend", "vertex", "--name", "q1", "--no-local-check")
    assert quota.exit_code == 1 and quota.stderr.count("\n") == 1, quota.stderr
    assert "quota aiplatform.googleapis.com/custom_model_serving_nvidia_l4_gpus in us-central1 is exhausted" in quota.stderr
    assert "console.cloud.google.com/iam-admin/quotas" in quota.stderr
    assert all(not e.deployed_models for e in gcp.serving.endpoints.values())  # nothing serves, nothing bills
    gcp.deny("aiplatform.endpoints.deploy")
    denied = cli("deploy", tmp_path, "--backend", "vertex", "--name", "p1", "--no-local-check", "--option", "accelerator=A100-80GB:1")
    assert denied.exit_code == 1 and denied.stderr.count("\n") == 1, denied.stderr
    assert "Google Cloud denied aiplatform.endpoints.deploy on endpoint p1" in denied.stderr and "To fix: grant it" in denied.stderr
    assert all(not e.deployed_models for e in gcp.serving.endpoints.values())
    assert cli("undeploy", "q1").exit_code == 0 and cli("undeploy", "p1").exit_code == 0  # what was made is removable
    assert gcp.serving.endpoints == {} and gcp.serving.models == {}


def test_bad_options_are_one_line_and_create_nothing(gcp, tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    typo = cli("deploy", tmp_path, "--backend", "vertex", "--option", "machine_typ=g2-standard-8")
    assert typo.exit_code == 2 and "--option machine_typ is not a Vertex AI deploy setting" in typo.stderr
    gpu = cli("deploy", tmp_path, "--backend", "vertex", "--option", "accelerator=T4:1")
    assert gpu.exit_code == 2 and gpu.stderr.count("\n") == 1 and "Known kinds: A10G, L4" in gpu.stderr
    assert "pydantic" not in gpu.stderr
    assert "machine_type" in typo.stderr and typo.stderr.count("\n") == 1
    replicas = cli("deploy", tmp_path, "--backend", "vertex", "--option", "min_replicas=2", "--option", "max_replicas=1")
    assert replicas.exit_code == 2 and "below min_replicas" in replicas.stderr
    monkeypatch.delenv("LAUNCHER_VERTEX_SERVING_IMAGE")
    assert "no serving image for Vertex AI" in cli("deploy", tmp_path, "--backend", "vertex").stderr
    assert cli("invoke", "ghost", "hi", "--backend", "vertex").exit_code == 2
    assert cli("undeploy", "ghost", "--backend", "vertex").exit_code == 2
    assert gcp.serving.calls == [] and objects("") == []


def test_a_deploy_whose_answers_were_lost_is_retried_without_duplicates(gcp, finished_job, tmp_path):
    """UploadModel and CreateEndpoint answer UNAVAILABLE, sometimes after Vertex acted: the deploy fails in
    one line, and deploying again finds what was made (by label and by name) instead of making it twice."""
    model = tmp_path / "model"
    shutil.copytree(finished_job / "model", model)
    gcp.faults(rate=1.0, methods={"UploadModel", "CreateEndpoint"}, seed=3)
    for _ in range(6):  # until an answer was lost after the model was made
        failed = cli("deploy", model, "--backend", "vertex", "--name", "lossy", "--no-local-check")
        assert failed.exit_code == 1 and failed.stderr.count("\n") == 1, failed.output
        if any(after for method, _, after in gcp.injected if method == "UploadModel"):
            break
    assert any(after for method, _, after in gcp.injected if method == "UploadModel")
    gcp.faults(rate=0)
    deployed = cli("deploy", model, "--backend", "vertex", "--name", "lossy", "--no-local-check", "--json")
    assert deployed.exit_code == 0, deployed.output
    assert len(gcp.serving.models) == 1 and list(gcp.serving.endpoints) == ["projects/test-project/locations/us-central1/endpoints/lossy"]
    assert cli("undeploy", "lossy").exit_code == 0 and gcp.serving.models == {} and gcp.serving.endpoints == {}
