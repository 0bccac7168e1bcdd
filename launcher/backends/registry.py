"""Backends by name, and the job index that lets any process find a job's backend again.

A backend is registered as a dotted path plus the extra that provides its SDK, so naming a backend
imports nothing until it is used, and a missing SDK fails with ``pip install "launcher[<extra>]"``
instead of an ImportError. Cloud backends are added here when their modules land.

The index (``$LAUNCHER_HOME/index.json``: job id -> backend and when it was submitted) is what
``launcher.attach(job_id)`` and ``launcher status JOB_ID`` read, whatever backend ran the job.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.errors import MissingExtraError, NotFoundError, UserInputError, did_you_mean
from launcher.state import file_lock, home, write_json

if TYPE_CHECKING:
    from launcher.backends.base import Backend


@dataclass(frozen=True)
class BackendEntry:
    path: str  # "module:Class"
    extra: str | None  # the pip extra that provides the SDK; None when the core install suffices
    requires: tuple[str, ...] = ()  # top-level modules the backend imports (checked before importing it)


BACKENDS: dict[str, BackendEntry] = {
    "local": BackendEntry("launcher.backends.local:LocalBackend", None),
}


def register(name: str, path: str, extra: str | None = None, requires: tuple[str, ...] = ()) -> None:
    """Add (or replace) a backend under ``name``."""
    BACKENDS[name] = BackendEntry(path, extra, tuple(requires))


def names() -> list[str]:
    return list(BACKENDS)


def get(name: str) -> Backend:
    """A fresh instance of the backend called ``name``."""
    entry = BACKENDS.get(name)
    if entry is None:
        raise UserInputError(
            f"unknown backend '{name}'.{did_you_mean(name, BACKENDS)} "
            f"Known backends: {', '.join(BACKENDS)}. To fix: pass one of them with --backend"
        )
    for module in entry.requires:
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError(module, entry.extra or "dev", f"the '{name}' backend")
    module_name, _, class_name = entry.path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:  # an SDK the backend imports at module level
        if exc.name and not exc.name.startswith("launcher") and entry.extra:
            raise MissingExtraError(exc.name, entry.extra, f"the '{name}' backend") from None
        raise
    return getattr(module, class_name)()


# --- the job index -----------------------------------------------------------------------------------
def _index_path() -> Path:
    return home() / "index.json"


def read_index() -> dict[str, dict]:
    try:
        return json.loads(_index_path().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def record_job(job_id: str, backend: str, created_at: str) -> None:
    """Remember which backend runs ``job_id`` (idempotent)."""
    with file_lock(home() / "locks" / "index.lock"):
        index = read_index()
        if index.get(job_id, {}).get("backend") == backend:
            return
        index[job_id] = {"backend": backend, "created_at": created_at}
        write_json(_index_path(), index)


def backend_of(job_id: str) -> str:
    """The backend name of a known job; NotFoundError with a hint otherwise."""
    index = read_index()
    entry = index.get(job_id)
    if entry is None:
        raise NotFoundError(
            f"no job '{job_id}' in {_index_path()}.{did_you_mean(job_id, index)} "
            "To fix: run 'launcher list' to see job ids (or set LAUNCHER_HOME to the folder the job was submitted from)"
        )
    return entry["backend"]
