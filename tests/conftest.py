"""Shared fixtures: every test runs with its own launcher home, offline, with one tiny-llama per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def launcher_cache(tmp_path_factory) -> str:
    """One cache folder for the session, so tiny-llama is built once (subprocesses inherit it)."""
    path = str(tmp_path_factory.mktemp("launcher-cache"))
    os.environ["LAUNCHER_CACHE"] = path
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(launcher_cache):
    from entrypoints import tiny_llama

    return tiny_llama.materialize(launcher_cache)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch, launcher_cache):
    """Local job state goes to a per-test folder; the cache is shared."""
    monkeypatch.setenv("LAUNCHER_HOME", str(tmp_path / ".launcher"))
    monkeypatch.setenv("LAUNCHER_CACHE", launcher_cache)
