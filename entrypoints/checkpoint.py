"""Checkpoints that survive kills and file-by-file syncs: adapter, optimizer, scheduler, RNG states,
data position, and what they were trained on.

A checkpoint is complete when its completion marker (``complete.json``, written last, after every
other file is flushed) is there and every file it lists is there with the listed size. The folder's
name proves nothing: SageMaker syncs ``/opt/ml/checkpoints`` to S3 file by file and restores it the
same way, and Cloud Storage FUSE does not rename folders atomically, so a folder can be restored with
files missing. Locally each checkpoint is still written to ``step-NNNNNNNN.tmp-<pid>`` and renamed.
Resuming takes the newest complete checkpoint and skips, with a warning, newer partial ones. It restores
every RNG stream and the data position, so a killed-and-resumed run computes exactly what an
uninterrupted run computes.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

_STEP = re.compile(r"^step-(\d{8})$")
MARKER = "complete.json"


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(directory: Path, step: int, *, adapter: dict, state: dict, position: dict, keep: int) -> Path:
    """Write one complete checkpoint (the marker last), then drop all but the newest ``keep``. ``state``:
    the optimizer's and scheduler's state dicts and the RNG states (``rng``: one ``rng_state()`` per
    rank), as whole tensors."""
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:08d}"
    tmp = directory / f"{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in adapter.items()}, str(tmp / "adapter.safetensors"))
    torch.save(state, tmp / "state.pt")
    (tmp / "position.json").write_text(json.dumps(position))
    files = {}
    for path in sorted(tmp.iterdir()):
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
        files[path.name] = path.stat().st_size
    with (tmp / MARKER).open("w") as handle:  # last: only a checkpoint with every file flushed has it
        json.dump({"step": step, "files": files}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    if final.exists():  # a re-run reaching the same step (after a kill before pruning)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(directory)
    whole = complete(directory)
    for old in whole[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for partial in set(_step_folders(directory)) - set(whole):  # superseded by this complete one
        shutil.rmtree(partial, ignore_errors=True)
    return final


def missing(path: Path) -> str | None:
    """Why the checkpoint folder ``path`` is not complete (None when it is)."""
    try:
        files = json.loads((path / MARKER).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no readable {MARKER}"
    for name, size in files.items():
        if not (path / name).is_file():
            return f"{name} missing"
        if (path / name).stat().st_size != size:
            return f"{name} has {(path / name).stat().st_size} of {size} bytes"
    return None


def _step_folders(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and _STEP.match(p.name))


def complete(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    return [p for p in _step_folders(directory) if missing(p) is None]


def latest(directory: Path, warn=print) -> Path | None:
    """The newest complete checkpoint. Half-written local ``.tmp`` folders are removed; newer partial
    checkpoints (a sync cut short) are skipped with a warning."""
    if directory.is_dir():
        for leftover in directory.glob("step-*.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    found = None
    for path in reversed(_step_folders(directory)):
        why = missing(path)
        if why is None:
            found = path
            break
        warn(f"warning: checkpoint {path.name} is incomplete ({why}): skipped")
    return found


def load(path: Path) -> tuple[dict, dict, dict]:
    """(adapter tensors, {optimizer, scheduler, rng}, position) of a checkpoint."""
    import torch
    from safetensors.torch import load_file

    adapter = load_file(str(path / "adapter.safetensors"))
    state = torch.load(path / "state.pt", weights_only=False)
    position = json.loads((path / "position.json").read_text())
    return adapter, state, position


def write_atomic(path: Path, text: str) -> None:
    """Write a text file so that readers see the old or the new content, never half of it."""
    from launcher.state import write_text

    write_text(path, text)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
