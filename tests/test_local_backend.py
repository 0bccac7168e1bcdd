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
from launcher.backends.base import JobRef, JobState
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
            LocalBackend(grace_s=5).cancel(info.ref)


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
    logs = [line for info in LocalBackend().list() for line in LocalBackend().logs(info.ref)][-30:]
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


def job_id_of(spec_file, run_name: str = "run1") -> str:
    return api.request(spec_file, run_name=run_name)[0].job_id


def test_lifecycle_detach_interrupt_resume_succeed(spec_file):
    job_id = job_id_of(spec_file)

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
    settings = json.loads(Path(job_dir, "input/config/hyperparameters.json").read_text())
    assert settings["max_steps"] == "12" and settings["launcher_schema"] == "1"
    assert "lora_dropout" not in settings  # only what differs from the defaults travels
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
    checkpointed = handle.status().checkpoint_step
    result = cli("train", str(spec_file))
    assert result.exit_code == 0, result.output
    assert f"Resuming job {job_id} from step {checkpointed} (attempt 2)" in result.stdout
    assert f"resumed from step-{checkpointed:08d}" in result.stdout and "SUCCEEDED" in result.stdout
    info = handle.status()
    assert info.state is JobState.SUCCEEDED and info.attempt == 2
    assert Path(info.output, "adapter_config.json").is_file()
    metrics = handle.metrics()
    assert metrics["schema"] == 1 and metrics["train"]["steps"] == 12

    # Logs are kept (both attempts); list shows the job; a resubmission after success re-attaches.
    logs = cli("logs", job_id).stdout
    assert "attempt 1 of job" in logs and "attempt 2 of job" in logs and "INTERRUPTED (checkpointed; submit it again to resume)" in logs
    assert "CANCELLED (cancelled by user)" not in logs  # the cancel came after the interruption: no process to end
    listed = json.loads(cli("list", "--state", "succeeded", "--json").stdout)
    assert [j["job_id"] for j in listed] == [job_id]
    again = api.launch(spec_file)
    assert again.reattached and again.status().attempt == 2
    assert entrypoint_processes(job_dir) == 0


def test_ctrl_c_detaches_and_cancel_stops_the_job(spec_file):
    job_id = job_id_of(spec_file, "cancelme")
    handle = api.JobHandle(JobRef("local", job_id), LocalBackend())

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
    assert f"Job {job_id}: CANCELLED" in result.stdout and "exit code" not in result.stdout
    assert "ended" in cli("logs", job_id).stdout.splitlines()[-1] and "CANCELLED (cancelled by user)" in cli("logs", job_id).stdout
    assert time.monotonic() - started < 60  # the entrypoint stopped on SIGTERM; no SIGKILL needed
    assert handle.status().state is JobState.CANCELLED
    assert entrypoint_processes(handle.status().extra["job_dir"]) == 0
    assert cli("cancel", job_id).exit_code == 0  # cancelling a stopped job is harmless


def test_a_setting_that_cannot_run_is_refused_before_anything_is_staged(spec_file, tmp_path):
    # general_mix needs a general_eval set: refused when the spec is validated, not inside the job.
    spec = json.loads(spec_file.read_text())
    spec["training"]["general_mix"] = 0.2
    spec_file.write_text(json.dumps(spec))
    result = cli("train", str(spec_file))
    assert result.exit_code == 2
    assert "general_mix > 0 needs general text" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not LocalBackend().list()


def test_a_failing_job_reports_why_in_one_line_and_exits_1(spec_file, monkeypatch):
    # A Hub model that cannot be downloaded (offline here): the job fails with one readable reason.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = json.loads(spec_file.read_text())
    spec["base_model"] = "no-such-org/no-such-model"
    spec_file.write_text(json.dumps(spec))
    result = cli("train", str(spec_file))
    assert result.exit_code == 1
    job_id = job_id_of(spec_file)
    assert result.stderr.startswith(f"Error: job {job_id} failed: base model 'no-such-org/no-such-model' cannot be loaded")
    assert len(result.stderr.strip().splitlines()) == 1
    info = LocalBackend().status(JobRef("local", job_id))
    assert info.state is JobState.FAILED and info.extra["exit_code"] == 2
    assert "\n" not in info.message and "To fix:" in info.message
    assert "Traceback" not in cli("logs", job_id).stdout
    listed = json.loads(cli("list", "--json").stdout)
    assert [j["message"] for j in listed] == [info.message]
    with pytest.raises(JobFailedError, match="cannot be loaded from the Hugging Face Hub"):
        api.attach(job_id).wait(logs=False, poll=0.1)