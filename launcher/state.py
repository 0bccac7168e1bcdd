"""State on disk, in one place: the home and cache folders, file locks and atomic writes.

Everything launcher writes that another process reads (job state, the job index, reports, metrics,
checkpoint side files, a spec from ``launcher init``) goes through ``write_text`` / ``write_json``:
a temporary file in the same folder, flushed and fsynced, then ``os.replace``. A reader sees the old
content or the new, never half of it, and a crash leaves at most a hidden ``.NAME-*`` temp file.
Folders made once and then only read (a downloaded model, a converted GGUF) go through
``atomic_folder``: filled under a hidden temporary name beside the target, then renamed.
Pure standard library: the training entrypoint imports it too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def home() -> Path:
    """Where launcher keeps local state: $LAUNCHER_HOME, default ./.launcher (absolute)."""
    return Path(os.environ.get("LAUNCHER_HOME") or ".launcher").absolute()


def cache_root() -> Path:
    """Where launcher caches what it can make or download again: $LAUNCHER_CACHE, default ~/.cache/launcher."""
    return Path(os.environ.get("LAUNCHER_CACHE") or Path.home() / ".cache" / "launcher")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path`` for the duration of the block (waits for other holders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    """Write a whole file or nothing: a temporary file in the same folder, fsynced, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding=encoding, newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: object) -> None:
    """``write_text`` of ``data`` as indented, key-sorted JSON."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; {} when the file does not exist."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def atomic_folder(target: Path, fill: Callable[[Path], None]) -> Path:
    """``target``, filled by ``fill(tmp)`` in a hidden temporary folder beside it and then renamed, so
    a folder under that name is always complete. When another process renamed its copy first, that
    one is kept. A crash leaves at most a hidden ``.NAME-*`` folder, which no lookup takes for the target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fill(tmp)
        tmp.rename(target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
