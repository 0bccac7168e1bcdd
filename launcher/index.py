"""The job and endpoint index: every job this home has submitted or attached to, keyed by backend and job
id, and every endpoint it deployed (``endpoints.json``, name -> backend).

``$LAUNCHER_HOME/index.json`` maps ``"<backend>/<job id>"`` to the job's ``JobRef`` (native id,
location, attempt) and when it was recorded, so ``launcher.attach(job_id)`` and ``launcher status
JOB_ID`` find a job again from any process, whatever backend runs it. A job the index lacks (submitted
from another machine, or CI) is found by asking the backends (``api.attach``), then recorded here.
Writes are atomic and serialised by a lock.
"""

from __future__ import annotations

from typing import Any

from launcher.backends.base import JobRef
from launcher.state import file_lock, home, read_json, write_json


def _path():
    return home() / "index.json"


def entries() -> dict[str, dict]:
    """The raw index: key -> {"ref": ..., "recorded_at": ...}. Entries of the first format (job id ->
    backend) read as references without a native id."""
    raw = read_json(_path())
    out = {}
    for key, value in raw.items():
        if "ref" in value:
            out[key] = value
        else:  # {job_id: {"backend": ..., "created_at": ...}}
            out[f"{value['backend']}/{key}"] = {"ref": {"backend": value["backend"], "job_id": key}, "recorded_at": value.get("created_at", "")}
    return out


def record(ref: JobRef, recorded_at: str = "") -> None:
    """Remember ``ref`` (replacing what the index held for that backend and job id)."""
    key = f"{ref.backend}/{ref.job_id}"
    with file_lock(home() / "locks" / "index.lock"):
        index = entries()
        if index.get(key, {}).get("ref") == ref.to_dict():
            return
        index[key] = {"ref": ref.to_dict(), "recorded_at": recorded_at or index.get(key, {}).get("recorded_at", "")}
        write_json(_path(), index)


def refs(job_id: str) -> list[JobRef]:
    """Every backend's reference for ``job_id`` (usually one)."""
    return [JobRef.from_dict(e["ref"]) for e in entries().values() if e["ref"]["job_id"] == job_id]


def backends() -> set[str]:
    return {e["ref"]["backend"] for e in entries().values()}


def job_ids() -> list[str]:
    return sorted({e["ref"]["job_id"] for e in entries().values()})


# --- endpoints ------------------------------------------------------------------------------------------
# ``$LAUNCHER_HOME/endpoints.json``: endpoint name -> {"backend", "recorded_at"}, so ``launcher invoke NAME``
# and ``undeploy NAME`` find the backend of an endpoint deployed from any process. Names are unique per home.
def _endpoints_path():
    return home() / "endpoints.json"


def record_endpoint(name: str, backend: str, recorded_at: str = "", location: dict[str, str] | None = None,
                    monitor: dict[str, Any] | None = None) -> None:
    """Remember where endpoint ``name`` was deployed: its backend and, for a cloud, the region (project,
    bucket) its deploy options named, so invoke and undeploy find it outside the environment's region;
    and the monitor ``deploy --monitor-sink`` attached (capture source, baseline, sinks)."""
    with file_lock(home() / "locks" / "index.lock"):
        known = read_json(_endpoints_path())
        entry = {"backend": backend, "recorded_at": recorded_at, "location": dict(location or {})}
        if monitor or known.get(name, {}).get("monitor"):
            entry["monitor"] = dict(monitor or known[name]["monitor"])
        if {k: v for k, v in known.get(name, {}).items() if k != "recorded_at"} == {k: v for k, v in entry.items() if k != "recorded_at"}:
            return
        known[name] = entry
        write_json(_endpoints_path(), known)


def endpoint_backend(name: str) -> str | None:
    """The backend endpoint ``name`` was deployed to from this home, if any."""
    return read_json(_endpoints_path()).get(name, {}).get("backend")


def endpoint_location(name: str) -> dict[str, str]:
    """The location options endpoint ``name`` was deployed with from this home (none: the environment's)."""
    return dict(read_json(_endpoints_path()).get(name, {}).get("location") or {})


def endpoint_monitor(name: str) -> dict[str, Any]:
    """The monitor attached to endpoint ``name`` at deploy (source, baseline, sinks), or {}."""
    return dict(read_json(_endpoints_path()).get(name, {}).get("monitor") or {})


def endpoint_backends() -> set[str]:
    return {entry["backend"] for entry in read_json(_endpoints_path()).values()}
