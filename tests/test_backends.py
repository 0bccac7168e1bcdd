"""The backend registry, the job index and the shared job-state enum."""

from __future__ import annotations

import pytest

from launcher import api
from launcher.backends import registry
from launcher.backends.base import Feature, JobState
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


def test_index_remembers_the_backend_of_each_job(tmp_path):
    registry.record_job("a-run1-11111111", "local", "2026-11-28T12:00:00Z")
    registry.record_job("a-run1-11111111", "local", "2026-11-28T12:00:00Z")  # idempotent
    assert registry.backend_of("a-run1-11111111") == "local"
    from launcher import state

    assert state.home() == (tmp_path / ".launcher").absolute()
    assert list(registry.read_index()) == ["a-run1-11111111"]


def test_terminal_states():
    assert {s for s in JobState if s.terminal} == {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    assert api.parse_state("running") is JobState.RUNNING
    with pytest.raises(UserInputError, match="Did you mean 'FAILED'"):
        api.parse_state("faild")
