"""The backend registry, the job index and the shared job-state enum."""

from __future__ import annotations

import pytest

from launcher import api
from launcher.backends import registry
from launcher.backends.base import Backend, Feature, JobState
from launcher.backends.local import LocalBackend
from launcher.errors import MissingExtraError, NotFoundError, UnsupportedError, UserInputError


def test_local_is_registered_and_builds():
    assert "local" in registry.names()
    assert isinstance(registry.get("local"), LocalBackend)


def test_unknown_backend_suggests_the_closest_and_lists_all():
    with pytest.raises(UserInputError) as caught:
        registry.get("locl")
    message = str(caught.value)
    assert "unknown backend 'locl'" in message
    assert "Did you mean 'local'?" in message
    assert "Known backends: local" in message
    assert caught.value.exit_code == 2


def test_missing_sdk_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(registry.BACKENDS, "cloudy", registry.BackendEntry("launcher.backends.local:LocalBackend", "aws", ("no_such_sdk_xyz",)))
    with pytest.raises(MissingExtraError, match=r"'no_such_sdk_xyz'.*pip install \"launcher\[aws\]\""):
        registry.get("cloudy")


def test_backend_module_importing_a_missing_sdk_names_the_extra(monkeypatch):
    monkeypatch.setitem(registry.BACKENDS, "cloudy", registry.BackendEntry("no_such_sdk_abc.backend:Backend", "gcp"))
    with pytest.raises(MissingExtraError, match=r'pip install "launcher\[gcp\]"'):
        registry.get("cloudy")


def test_unsupported_feature_is_one_clear_error():
    with pytest.raises(UnsupportedError, match="does not support multi-node training: it runs on this one machine"):
        LocalBackend().require(Feature.MULTI_NODE)
    LocalBackend().require(Feature.CANCEL)  # supported: no error


def test_attach_to_an_unknown_job_is_not_found():
    with pytest.raises(NotFoundError, match="no job 'nope-run1-00000000'.*launcher list") as caught:
        api.attach("nope-run1-00000000")
    assert caught.value.exit_code == 2


def test_job_refs_round_trip_through_the_index_and_attach_from_a_fresh_home(tmp_path, monkeypatch):
    from launcher import index, state
    from launcher.backends.base import JobRef

    assert state.home() == (tmp_path / ".launcher").absolute()
    ref = JobRef("cloudy", "fin-run1-0123456789", native_id="arn:aws:sagemaker:eu-west-1:1:training-job/fin-run1-0123456789-a2",
                 location={"region": "eu-west-1"}, attempt=2)
    index.record(ref, "2026-12-01T10:00:00Z")
    index.record(ref)  # idempotent
    assert index.refs(ref.job_id) == [ref]
    assert JobRef.from_dict(ref.to_dict()) == ref
    # Another machine's home knows nothing: attach asks the backends, finds it, and records it there.
    MemoryBackend.jobs = {ref.job_id: (ref, JobState.SUCCEEDED, "")}
    monkeypatch.setitem(registry.BACKENDS, "cloudy", registry.BackendEntry("test_backends:MemoryBackend", None))
    monkeypatch.setenv("LAUNCHER_HOME", str(tmp_path / "fresh"))
    assert index.refs(ref.job_id) == []
    handle = api.attach(ref.job_id)
    assert handle.ref == ref and handle.backend.name == "cloudy"
    assert index.refs(ref.job_id) == [ref]


def test_the_first_index_format_still_reads(tmp_path):
    import json

    from launcher import index

    (tmp_path / ".launcher").mkdir()
    (tmp_path / ".launcher/index.json").write_text(json.dumps({"a-run1-11111111": {"backend": "local", "created_at": "x"}}))
    assert [(r.backend, r.job_id) for r in index.refs("a-run1-11111111")] == [("local", "a-run1-11111111")]


def test_active_states():
    assert {s for s in JobState if s.active} == {JobState.PENDING, JobState.RUNNING, JobState.STOPPING}
    assert not JobState.INTERRUPTED.active and not JobState.INTERRUPTED.terminal  # at rest, resumable


class MemoryBackend(Backend):
    """A backend whose jobs live in a class dict: what a cloud backend looks like from api's side."""

    name = "cloudy"
    jobs: dict = {}
    submitted: list = []

    def find(self, job_id):
        return self.jobs[job_id][0] if job_id in self.jobs else None

    def submit(self, request):
        from launcher.backends.base import JobRef

        ref = JobRef(self.name, request.job_id, native_id=f"{request.job_id}-a{request.attempt}", attempt=request.attempt)
        self.submitted.append(request)
        self.jobs[request.job_id] = (ref, JobState.PENDING, "")
        return ref

    def status(self, ref):
        from launcher.backends.base import JobInfo

        stored, state, message = self.jobs[ref.job_id]
        return JobInfo(stored.job_id, self.name, state, message=message, attempt=stored.attempt, native_id=stored.native_id)

    def logs(self, ref, follow=False):
        return iter(())

    def cancel(self, ref):
        return self.status(ref)

    def list(self, state=None):
        return []


def test_launch_re_attaches_to_a_job_the_platform_is_restarting(tmp_path, monkeypatch):
    """A managed-spot restart is RUNNING (with a message and the attempt), never INTERRUPTED: launching
    the same spec again must not submit a second job."""
    from launcher.backends.base import JobRef

    (tmp_path / "t.jsonl").write_text('{"prompt": "q", "completion": "a"}\n' * 3)
    (tmp_path / "job.yaml").write_text("name: fin\ndata:\n  train: t.jsonl\n")
    monkeypatch.setitem(registry.BACKENDS, "cloudy", registry.BackendEntry("test_backends:MemoryBackend", None))
    MemoryBackend.jobs, MemoryBackend.submitted = {}, []
    first = api.launch(tmp_path / "job.yaml", backend="cloudy")
    assert not first.reattached and len(MemoryBackend.submitted) == 1
    MemoryBackend.jobs[first.job_id] = (JobRef("cloudy", first.job_id, attempt=1), JobState.RUNNING,
                                        "restarting after a spot reclaim (platform attempt 2)")
    again = api.launch(tmp_path / "job.yaml", backend="cloudy")
    assert again.reattached and again.job_id == first.job_id and len(MemoryBackend.submitted) == 1
    # At rest after an interruption: the next launch is the next attempt, and it resumes.
    MemoryBackend.jobs[first.job_id] = (JobRef("cloudy", first.job_id, attempt=1), JobState.INTERRUPTED, "")
    resumed = api.launch(tmp_path / "job.yaml", backend="cloudy")
    assert not resumed.reattached and MemoryBackend.submitted[-1].attempt == 2 and resumed.ref.attempt == 2


def test_dry_run_prints_the_job_id_and_the_request_and_stages_nothing(tmp_path):
    import json

    from typer.testing import CliRunner

    from launcher.cli.main import app

    (tmp_path / "t.jsonl").write_text('{"prompt": "q", "completion": "a"}\n' * 3)
    (tmp_path / "job.yaml").write_text("name: fin\ndata:\n  train: t.jsonl\ntraining:\n  lora_r: 8\n")
    result = CliRunner().invoke(app, ["train", str(tmp_path / "job.yaml"), "--dry-run", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    built = api.request(tmp_path / "job.yaml")[0]
    assert out["job_id"] == built.job_id and out["backend"] == "local"
    request = out["request"]
    assert request["hyperparameters.json"]["lora_r"] == "8" and request["channels"] == {"train": str(tmp_path / "t.jsonl")}
    assert request["command"][-2:] == ["--root", request["job_dir"]] and request["secrets"] == {"hf_token": "HF_TOKEN"}
    assert not (tmp_path / ".launcher" / "jobs").exists() and not (tmp_path / ".launcher" / "index.json").exists()


def test_terminal_states():
    assert {s for s in JobState if s.terminal} == {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    assert api.parse_state("running") is JobState.RUNNING
    with pytest.raises(UserInputError, match="Did you mean 'FAILED'"):
        api.parse_state("faild")


def test_the_local_backend_says_when_the_spec_asks_for_a_gpu_it_does_not_have(tmp_path, monkeypatch):
    from launcher.backends import local

    monkeypatch.setattr(local, "_has_cuda_gpu", lambda: False)  # this machine's answer, whatever the test host has
    (tmp_path / "t.jsonl").write_text('{"prompt": "q", "completion": "a"}\n' * 3)
    (tmp_path / "job.yaml").write_text("name: fin\ndata:\n  train: t.jsonl\ncompute:\n  accelerator: H100:1\n")
    _, _, warnings = api.request(tmp_path / "job.yaml")
    assert warnings == ["the spec asks for H100:1 but this machine has no CUDA GPU: the local backend trains on the CPU"]
    (tmp_path / "job.yaml").write_text("name: fin\ndata:\n  train: t.jsonl\nlocal:\n  device: cuda\n")
    with pytest.raises(UnsupportedError, match="local.device is cuda but this machine has no CUDA GPU. To fix: local.device: auto"):
        api.request(tmp_path / "job.yaml")
    monkeypatch.setattr(local, "_has_cuda_gpu", lambda: True)
    assert api.request(tmp_path / "job.yaml")[2] == []
