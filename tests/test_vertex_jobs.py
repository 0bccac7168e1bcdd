"""Vertex AI jobs that really run (tests/fakes/vertex.py: the real aiplatform_v1 and Cloud Logging
clients over gRPC, the source bundle pip-installed and run with tiny-llama on the CPU, outputs in
gcp-storage-emulator), driven as a user would: the CLI and the API, status, logs, cancel and resume,
metrics, the report, a worker restart, a quota refusal, and random faults around create."""

from __future__ import annotations

import json
import time

import grpc
import pytest
from conftest import SMALL_HP, assert_same_adapter, summary_records, write_jsonl
from typer.testing import CliRunner

from launcher import api
from launcher.backends.base import JobState
from launcher.cli.main import app

pytestmark = pytest.mark.slow
SECRET = "hf_THIS-VALUE-MUST-NEVER-TRAVEL"


@pytest.fixture
def job_spec(vertex_fake, tmp_path, monkeypatch):
    """A tiny job for the vertex backend, its staging bucket in the emulator."""
    from launcher import clouds

    clouds.gcs_client().create_bucket("vx-bucket")
    monkeypatch.setenv("LAUNCHER_VERTEX_PROJECT", "test-project")
    monkeypatch.setenv("LAUNCHER_VERTEX_REGION", "us-central1")
    monkeypatch.setenv("LAUNCHER_VERTEX_BUCKET", "vx-bucket")
    monkeypatch.setenv("HF_TOKEN", SECRET)  # in the launcher's environment: it must not reach the job
    write_jsonl(tmp_path / "train.jsonl", summary_records(48))
    training = {k: (float(v) if "." in v or "e" in v else int(v)) for k, v in SMALL_HP.items()}

    def make(name="fin", spot=False, **overrides):
        spec = {"name": name, "data": {"train": str(tmp_path / "train.jsonl")}, "training": {**training, **overrides},
                "compute": {"accelerator": "L4:1", "spot": spot, "max_runtime": "1h"}, "vertex": {"region": "us-central1"}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(json.dumps(spec))
        return path

    return make


def cli(*args: str):
    return CliRunner().invoke(app, list(map(str, args)), catch_exceptions=False)


def wait_for_line(handle, prefix: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not any(line.startswith(prefix) for line in handle.logs()):
        assert time.monotonic() < deadline, list(handle.logs())
        time.sleep(0.5)


def test_a_job_trains_end_to_end_and_reports(job_spec, vertex_fake):
    spec = job_spec()
    result = cli("train", spec, "--backend", "vertex")  # streams the job's Cloud Logging entries to the end
    assert result.exit_code == 0, result.output
    assert 'Logs: Cloud Logging: resource.type="ml_job"' in result.stdout and "Console: https://console.cloud.google.com/vertex-ai/" in result.stdout
    assert "step 12/12 loss" in result.stdout and "SUCCEEDED" in result.stdout
    job_id = api.request(spec, backend="vertex")[0].job_id
    status = json.loads(cli("status", job_id, "--json").stdout)
    assert status["state"] == "SUCCEEDED" and status["output"] == f"gs://vx-bucket/launcher/jobs/{job_id}/model/"
    metrics = json.loads(cli("metrics", job_id, "--json").stdout)  # the model dir downloaded from GCS
    assert metrics["train"]["steps"] == 12 and metrics["quality"]["tuned"]["rougeL"] > metrics["quality"]["base"]["rougeL"]
    handle = api.attach(job_id)
    assert cli("report", job_id).exit_code == 0 and (handle.artifacts() / "report.html").is_file()
    assert [j["job_id"] for j in json.loads(cli("list", "--backend", "vertex", "--json").stdout)] == [job_id]
    assert "Re-attached" in cli("train", spec, "--backend", "vertex", "--detach").stdout  # never a second job
    assert len(vertex_fake.requests) == 1
    job = vertex_fake.requests[0].custom_job
    assert job.labels["launcher_job_id"] == job_id and job.job_spec.worker_pool_specs[0].python_package_spec.python_module == "entrypoints.train"
    assert SECRET not in str(vertex_fake.requests[0]) and SECRET not in "\n".join(handle.logs())


def test_cancel_stops_a_running_job_and_a_resubmission_resumes_it(job_spec, vertex_fake):
    spec = job_spec(name="stopme", epochs=40, checkpoint_every=3)
    handle = api.launch(spec, backend="vertex")
    wait_for_line(handle, "checkpoint step-")
    result = cli("cancel", handle.job_id)
    assert result.exit_code == 0 and handle.job_id in result.stdout
    assert vertex_fake.wait(handle.ref.native_id, timeout=120) == "JOB_STATE_CANCELLED"
    info = handle.status()
    assert info.state is JobState.CANCELLED and "submit it again to resume" in info.message and info.checkpoint_step
    again = cli("train", spec, "--backend", "vertex", "--detach")
    assert f"Resuming job {handle.job_id} from step {info.checkpoint_step} (attempt 2)" in again.stdout, again.stdout
    resumed = api.attach(handle.job_id)
    assert resumed.ref.attempt == 2 and resumed.ref.native_id != handle.ref.native_id
    deadline = time.monotonic() + 120
    while f"resumed from step-{info.checkpoint_step:08d}" not in "\n".join(resumed.logs()):  # attempt 1's checkpoint
        assert time.monotonic() < deadline, list(resumed.logs())
        time.sleep(0.5)
    cli("cancel", resumed.job_id)
    assert vertex_fake.wait(resumed.ref.native_id, timeout=120) == "JOB_STATE_CANCELLED"


def test_a_restarted_worker_resumes_and_ends_with_the_uninterrupted_adapter(job_spec, vertex_fake):
    plain = api.launch(job_spec(name="plain", spot=True, epochs=3, checkpoint_every=4, lora_dropout=0.1), backend="vertex")
    assert vertex_fake.wait(plain.ref.native_id, timeout=180) == "JOB_STATE_SUCCEEDED"
    spot = api.launch(job_spec(name="spotty", spot=True, epochs=3, checkpoint_every=4, lora_dropout=0.1), backend="vertex")
    assert vertex_fake.requests[-1].custom_job.job_spec.scheduling.strategy.name == "SPOT"
    wait_for_line(spot, "checkpoint step-")
    vertex_fake.restart_worker(spot.ref.native_id)  # a preempted Spot VM: Vertex restarts the replica
    assert spot.status().state is JobState.RUNNING
    assert api.launch(job_spec(name="spotty", spot=True, epochs=3, checkpoint_every=4, lora_dropout=0.1), backend="vertex").reattached
    assert vertex_fake.wait(spot.ref.native_id, timeout=180) == "JOB_STATE_SUCCEEDED"
    assert vertex_fake.restarts(spot.ref.native_id) == 1 and "resumed from step-" in "\n".join(spot.logs())
    assert_same_adapter(spot, plain)


def test_a_quota_refusal_is_one_line_naming_the_quota_and_region(job_spec, vertex_fake):
    vertex_fake.refuse_quota("NVIDIA_L4", spot=True)
    result = cli("train", job_spec(name="quota", spot=True), "--backend", "vertex")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "aiplatform.googleapis.com/custom_model_training" in lines[0] and "us-central1" in lines[0]
    assert "console.cloud.google.com/iam-admin/quotas" in lines[0] and vertex_fake.jobs() == []


def test_under_random_faults_n_launches_make_exactly_n_jobs(job_spec, vertex_fake):
    vertex_fake.faults(rate=0.3, codes=(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), seed=7)
    launched = [api.launch(job_spec(name=f"fault{i}", max_steps=1), backend="vertex") for i in range(6)]
    vertex_fake.faults(rate=0)
    assert any(method == "CreateCustomJob" and after for method, _, after in vertex_fake.injected)  # a lost answer happened
    jobs = vertex_fake.jobs()
    assert sorted(j.labels["launcher_job_id"] for j in jobs) == sorted(h.job_id for h in launched)  # each exactly once
    for handle in launched:
        assert vertex_fake.wait(handle.ref.native_id, timeout=180) == "JOB_STATE_SUCCEEDED"
        assert handle.status().state is JobState.SUCCEEDED


def test_the_readme_walk_through_against_a_server_started_by_hand(hand_started):
    """The README's offline Vertex AI section, as a shell runs it: tests/fakes/gcp_server.py in its own
    process, its printed environment, then the CLI as separate processes on the example spec."""
    from conftest import free_port, walk_through

    walk_through(hand_started("gcp_server.py", "--storage-port", str(free_port()), "--vertex-port", str(free_port())), "examples/fin-summary-vertex.yaml", "vertex")


def test_two_launchers_racing_make_one_job_and_a_dead_launchers_claim_is_taken_over(job_spec, vertex_fake, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from launcher import clouds
    from launcher.backends import vertex

    spec = job_spec(name="race", max_steps=1)
    with ThreadPoolExecutor(2) as pool:  # two launchers at once: one claims the attempt, the other waits for its job
        handles = list(pool.map(lambda _: api.launch(spec, backend="vertex"), range(2)))
    assert len(vertex_fake.jobs()) == 1 and handles[0].job_id == handles[1].job_id
    assert sorted(h.reattached for h in handles) == [False, True]
    # A launcher that died after claiming attempt 1 of another job, before creating it: its claim is
    # taken over once stale, and the job is created (once).
    other = job_spec(name="orphan", max_steps=1)
    job_id = api.request(other, backend="vertex")[0].job_id
    clouds.gcs_client().bucket("vx-bucket").blob(f"launcher/jobs/{job_id}/attempts/a1.claim").upload_from_string("0\n")
    monkeypatch.setattr(vertex, "CLAIM_STALE_S", 0)
    monkeypatch.setattr(vertex, "CLAIM_WAIT_S", 0)  # no wait for the dead claimant's job
    handle = api.launch(other, backend="vertex")
    assert not handle.reattached and [j.labels["launcher_job_id"] for j in vertex_fake.jobs()].count(job_id) == 1
