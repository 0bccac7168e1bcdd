"""The local backend's lifecycle, against the real training entrypoint on tiny-llama.

One job goes through everything a user does: concurrent submits (one process), detach, status, a
SIGTERM (spot-style interruption: checkpoint, exit 75, INTERRUPTED), resubmission (resumes from the
checkpoint in the same folder), success, metrics, and a resubmission after success (re-attaches).
Cancel and failure get their own short jobs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from launcher import api
from launcher.backends.base import JobState
from launcher.backends.local import LocalBackend
from launcher.cli.main import app
from launcher.errors import JobFailedError, NotFoundError
from launcher.spec import JobSpec

pytestmark = pytest.mark.slow
runner = CliRunner()

TINY_TRAINING = {
    "max_steps": 12,
    "max_seq_len": 64,
    "micro_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "learning_rate": 3e-3,
    "lora_r": 8,
    "lora_alpha": 16,
    "eval_samples": 2,
    "review_samples": 2,
    "max_new_tokens": 8,
    "checkpoint_every": 4,
    "logging_steps": 1,
}


@pytest.fixture
def spec_file(tmp_path: Path, tiny_llama_dir) -> Path:
    rng = random.Random(0)
    lines = []
    for _ in range(40):
        name, age = rng.choice(["Alice Moreno", "Bob Chen", "Carol Singh"]), rng.randint(25, 80)
        lines.append(json.dumps({"prompt": f"Client {name}, age {age}. Summarise.", "completion": f"Client: {name}. Age: {age}."}))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    spec = {"name": "lifecycle", "data": {"train": "train.jsonl"}, "training": TINY_TRAINING, "local": {"device": "cpu"}}
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


@pytest.fixture(autouse=True)
def _stop_leftover_jobs():
    """A failed test must not leave training processes behind."""
    yield
    for info in LocalBackend().list():
        if not info.state.terminal and info.state is not JobState.INTERRUPTED:
            LocalBackend().cancel(info.job_id, grace_s=5)


def cli(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def wait_for(predicate, timeout: float = 300, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    states = [(info.job_id, info.state.value, info.message) for info in LocalBackend().list()]
    logs = [line for info in LocalBackend().list() for line in LocalBackend().logs(info.job_id)][-30:]
    raise AssertionError(f"timed out waiting for {what}; jobs: {states}; last log lines:\n" + "\n".join(logs))


def entrypoint_processes(job_dir: str) -> int:
    """How many training processes run for this job dir (read from /proc, as `ps` would)."""
    count = 0
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"entrypoints.train" in cmdline and job_dir.encode() in cmdline:
            count += 1
    return count


def test_lifecycle_detach_interrupt_resume_succeed(spec_file):
    job_id = JobSpec.from_yaml(spec_file).job_id("run1")

    # Three submits at once (a double-click, a retried script): one job, one process.
    results = []
    threads = [threading.Thread(target=lambda: results.append(api.launch(spec_file))) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert {h.job_id for h in results} == {job_id}
    assert sorted(h.reattached for h in results) == [False, True, True]

    # Detached submit from the CLI re-attaches too, and says so.
    result = cli("train", str(spec_file), "--detach", "--json")
    assert result.exit_code == 0, result.output
    assert "Re-attached" in result.stderr
    info = json.loads(result.stdout)
    assert info["job_id"] == job_id and info["state"] in ("PENDING", "RUNNING")
    job_dir = info["extra"]["job_dir"]
    assert json.loads(Path(job_dir, "input/config/hyperparameters.json").read_text())["max_steps"] == "12"
    assert Path(job_dir, "input/data/train/train.jsonl").is_file()

    # A spot-style SIGTERM once training has started: checkpoint, exit 75, INTERRUPTED.
    handle = api.attach(job_id)
    def training_started() -> bool:
        assert handle.status().state in (JobState.PENDING, JobState.RUNNING), handle.status()
        return any(line.startswith("step ") for line in handle.logs())

    wait_for(training_started, what="the first training step")
    assert entrypoint_processes(job_dir) == 1
    os.killpg(handle.status().extra["pgid"], signal.SIGTERM)
    info = wait_for(lambda: (s := handle.status()).state is JobState.INTERRUPTED and s, what="INTERRUPTED")
    assert info.extra["exit_code"] == 75 and "submit it again to resume" in info.message
    assert any(Path(job_dir, "checkpoints").iterdir())
    status = json.loads(cli("status", job_id, "--json").stdout)
    assert status["state"] == "INTERRUPTED"
    # Cancelling it now ends it for good (nothing runs), but keeps the checkpoint for a resubmission.
    assert cli("cancel", job_id).exit_code == 0
    assert handle.status().state is JobState.CANCELLED and "submit it again to resume" in handle.status().message

    # Submitting again resumes in the same folder and streams the logs to the end.
    result = cli("train", str(spec_file))
    assert result.exit_code == 0, result.output
    assert "resumed from" in result.stdout and "SUCCEEDED" in result.stdout
    info = handle.status()
    assert info.state is JobState.SUCCEEDED and info.extra["attempt"] == 2
    assert Path(info.output, "adapter_config.json").is_file()
    metrics = handle.metrics()
    assert metrics["schema"] == 1 and metrics["train"]["steps"] == 12

    # Logs are kept (both attempts); list shows the job; a resubmission after success re-attaches.
    logs = cli("logs", job_id).stdout
    assert "attempt 1 of job" in logs and "attempt 2 of job" in logs and "INTERRUPTED (exit code 75)" in logs
    listed = json.loads(cli("list", "--state", "succeeded", "--json").stdout)
    assert [j["job_id"] for j in listed] == [job_id]
    again = api.launch(spec_file)
    assert again.reattached and again.status().extra["attempt"] == 2
    assert entrypoint_processes(job_dir) == 0


def test_ctrl_c_detaches_and_cancel_stops_the_job(spec_file):
    job_id = JobSpec.from_yaml(spec_file).job_id("cancelme")
    handle = api.JobHandle(job_id, LocalBackend())

    def running() -> bool:
        try:
            return handle.status().state is JobState.RUNNING
        except NotFoundError:
            return False

    # Ctrl-C in `launcher train` only detaches: the job keeps running.
    command = [sys.executable, "-m", "launcher.cli.main", "train", str(spec_file), "--run-name", "cancelme"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(running, what="RUNNING")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert f"Detached; job {job_id} keeps running. Re-attach with 'launcher logs -f {job_id}'" in out
    assert handle.status().state is JobState.RUNNING

    started = time.monotonic()
    result = cli("cancel", job_id, "--grace", "60")
    assert result.exit_code == 0
    assert f"Job {job_id}: CANCELLED" in result.stdout
    assert time.monotonic() - started < 60  # the entrypoint stopped on SIGTERM; no SIGKILL needed
    assert handle.status().state is JobState.CANCELLED
    assert entrypoint_processes(handle.status().extra["job_dir"]) == 0
    assert cli("cancel", job_id).exit_code == 0  # cancelling a stopped job is harmless


def test_a_failing_job_reports_why_and_exits_1(tmp_path, spec_file):
    # general_mix needs a general_eval set: the entrypoint rejects the hyperparameters (exit 2, one line).
    spec = json.loads(spec_file.read_text())
    spec["training"]["general_mix"] = 0.2
    spec_file.write_text(json.dumps(spec))
    result = cli("train", str(spec_file))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: job {JobSpec.from_yaml(spec_file).job_id()} failed: general_mix > 0 needs")
    assert len(result.stderr.strip().splitlines()) == 1
    job_id = JobSpec.from_yaml(spec_file).job_id("run1")
    info = LocalBackend().status(job_id)
    assert info.state is JobState.FAILED and info.extra["exit_code"] == 2
    with pytest.raises(JobFailedError, match="failed: general_mix"):
        api.attach(job_id).wait(logs=False, poll=0.1)
