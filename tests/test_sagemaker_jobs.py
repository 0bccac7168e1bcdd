"""SageMaker jobs that really run (tests/fakes/sagemaker.py: moto, plus the real sagemaker-training
toolkit running our source bundle with tiny-llama on the CPU), driven as a user would: the CLI and the
API, status, logs, cancel, metrics, the report, and a spot job interrupted and resumed."""

from __future__ import annotations

import json
import time

import boto3
import pytest
from conftest import SMALL_HP, assert_same_adapter, summary_records, write_jsonl
from typer.testing import CliRunner

from launcher import api
from launcher.backends.base import JobState
from launcher.cli.main import app

pytestmark = pytest.mark.slow
ROLE = "arn:aws:iam::123456789012:role/launcher-sagemaker"


@pytest.fixture
def job_spec(sagemaker_fake, tmp_path, monkeypatch):
    """A tiny job for the sagemaker backend, its bucket in moto, AWS's image named (never pulled)."""
    boto3.client("s3").create_bucket(Bucket="ml-bucket")
    monkeypatch.setenv("LAUNCHER_SAGEMAKER_ROLE_ARN", ROLE)
    monkeypatch.setenv("LAUNCHER_SAGEMAKER_BUCKET", "ml-bucket")
    monkeypatch.setenv("LAUNCHER_SAGEMAKER_SCRIPT_IMAGE", "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.8.0-gpu-py312")
    write_jsonl(tmp_path / "train.jsonl", summary_records(48))
    training = {k: (float(v) if "." in v or "e" in v else int(v)) for k, v in SMALL_HP.items()}

    def make(name="fin", spot=False, **overrides):
        spec = {"name": name, "data": {"train": str(tmp_path / "train.jsonl")}, "training": {**training, **overrides},
                "compute": {"accelerator": "A10G:1", "spot": spot, "max_runtime": "1h"}, "sagemaker": {"region": "us-east-1"}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(json.dumps(spec))
        return path

    return make


def cli(*args: str):
    return CliRunner().invoke(app, list(map(str, args)), catch_exceptions=False)


def test_a_job_trains_end_to_end_and_reports(job_spec, sagemaker_fake, tmp_path):
    spec = job_spec()
    result = cli("train", spec, "--backend", "sagemaker")  # streams the job's CloudWatch logs to the end
    assert result.exit_code == 0, result.output
    assert "Logs: CloudWatch Logs /aws/sagemaker/TrainingJobs" in result.stdout and "Console: https://" in result.stdout
    assert "step 12/12 loss" in result.stdout and "SUCCEEDED" in result.stdout
    job_id = api.request(spec, backend="sagemaker")[0].job_id
    status = json.loads(cli("status", job_id, "--json").stdout)
    assert status["state"] == "SUCCEEDED" and status["output"].endswith(f"{job_id}-a1/output/model.tar.gz")
    handle = api.attach(job_id)
    metrics = handle.metrics()  # model.tar.gz downloaded and unpacked through the core's artifacts
    assert metrics["train"]["steps"] == 12 and metrics["quality"]["tuned"]["rougeL"] > metrics["quality"]["base"]["rougeL"]
    assert json.loads(cli("metrics", job_id, "--json").stdout) == metrics
    report = cli("report", job_id)
    assert report.exit_code == 0 and (handle.artifacts() / "report.html").is_file()
    listed = json.loads(cli("list", "--backend", "sagemaker", "--json").stdout)
    assert [j["job_id"] for j in listed] == [job_id]
    again = cli("train", spec, "--backend", "sagemaker", "--detach")
    assert "Re-attached" in again.stdout  # a retried command never makes a second job


def test_cancel_stops_a_running_job_and_a_resubmission_resumes_it(job_spec, sagemaker_fake):
    spec = job_spec(name="stopme", epochs=40, checkpoint_every=3)
    handle = api.launch(spec, backend="sagemaker")
    deadline = time.monotonic() + 120
    while not any(line.startswith("checkpoint step-") for line in handle.logs()):
        assert time.monotonic() < deadline, list(handle.logs())
        time.sleep(0.5)
    result = cli("cancel", handle.job_id)
    assert result.exit_code == 0 and handle.job_id in result.stdout
    assert sagemaker_fake.wait(handle.ref.native_id, timeout=120) == "Stopped"
    info = handle.status()
    assert info.state is JobState.CANCELLED and "submit it again to resume" in info.message
    step = info.checkpoint_step  # the newest checkpoint whose completion marker reached S3
    assert step  # at least the first checkpoint (SIGTERM adds one where the program stopped)
    again = cli("train", spec, "--backend", "sagemaker", "--detach")
    assert f"Resuming job {handle.job_id} from step {step} (attempt 2)" in again.stdout, again.stdout
    resumed = api.attach(handle.job_id)
    assert resumed.ref.native_id == f"{handle.job_id}-a2"
    deadline = time.monotonic() + 120
    while f"resumed from step-{step:08d}" not in "\n".join(resumed.logs()):  # attempt 1's checkpoint
        assert time.monotonic() < deadline, list(resumed.logs())
        time.sleep(0.5)
    cli("cancel", resumed.job_id)
    assert sagemaker_fake.wait(resumed.ref.native_id, timeout=120) == "Stopped"


def test_a_spot_job_interrupted_and_restarted_ends_with_the_uninterrupted_adapter(job_spec, sagemaker_fake):
    plain = api.launch(job_spec(name="plain", spot=True, epochs=3, checkpoint_every=4, lora_dropout=0.1), backend="sagemaker")
    assert sagemaker_fake.wait(plain.ref.native_id, timeout=180) == "Completed"
    spot = api.launch(job_spec(name="spotty", spot=True, epochs=3, checkpoint_every=4, lora_dropout=0.1), backend="sagemaker")
    name = spot.ref.native_id
    checkpoints = f"launcher/jobs/{spot.job_id}/checkpoints/"
    deadline = time.monotonic() + 120
    while not any(o["Key"].endswith("/complete.json")
                  for o in boto3.client("s3").list_objects_v2(Bucket="ml-bucket", Prefix=checkpoints).get("Contents", [])):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    sagemaker_fake.interrupt(name)
    restarting = spot.status()
    assert restarting.state is JobState.RUNNING and restarting.state.active  # the platform restarts it: not at rest
    assert api.launch(job_spec(name="spotty", spot=True, epochs=3, checkpoint_every=4, lora_dropout=0.1), backend="sagemaker").reattached
    assert sagemaker_fake.wait(name, timeout=180) == "Completed"
    info = spot.status()
    assert info.state is JobState.SUCCEEDED and "spot saved" in info.message
    assert len(sagemaker_fake.roots(name)) == 2 and "resumed from step-" in "\n".join(spot.logs())
    assert_same_adapter(spot, plain)


def test_a_quota_refusal_is_one_line_naming_the_quota(job_spec, sagemaker_fake):
    sagemaker_fake.refuse_quota("ml.g5.xlarge", spot=True)
    result = cli("train", job_spec(name="quota", spot=True), "--backend", "sagemaker")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "quota 'ml.g5.xlarge for spot training job usage' is 0" in lines[0] and "Service Quotas" in lines[0]
    assert boto3.client("sagemaker").list_training_jobs()["TrainingJobSummaries"] == []


def test_the_readme_walk_through_against_a_server_started_by_hand(hand_started):
    """The README's offline SageMaker section, as a shell runs it: tests/fakes/aws_server.py in its own
    process, its printed environment, then the CLI as separate processes on the example spec."""
    from conftest import free_port, walk_through

    walk_through(hand_started("aws_server.py", "--port", str(free_port())), "examples/fin-summary-sagemaker.yaml", "sagemaker")
