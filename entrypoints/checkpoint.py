"""Checkpoints that survive kills: adapter, optimizer, scheduler, RNG states and data position.

Each checkpoint is written to ``step-NNNNNNNN.tmp-<pid>`` and renamed to ``step-NNNNNNNN`` only when
complete, so a folder without the ``.tmp`` suffix is always whole; a kill mid-write leaves a ``.tmp``
folder that is ignored and cleaned up. Resuming restores every RNG stream and the data position, so a
killed-and-resumed run computes exactly what an uninterrupted run computes.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

_COMPLETE = re.compile(r"^step-(\d{8})$")


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


def save(directory: Path, step: int, *, adapter: dict, optimizer, scheduler, position: dict, keep: int) -> Path:
    """Write one complete checkpoint atomically, then drop all but the newest ``keep``."""
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:08d}"
    tmp = directory / f"{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in adapter.items()}, str(tmp / "adapter.safetensors"))
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
        tmp / "state.pt",
    )
    (tmp / "position.json").write_text(json.dumps(position))
    for path in tmp.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():  # a re-run reaching the same step (after a kill before pruning)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(directory)
    for old in complete(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and _COMPLETE.match(p.name))


def latest(directory: Path) -> Path | None:
    """The newest complete checkpoint; half-written ``.tmp`` folders are removed."""
    if directory.is_dir():
        for leftover in directory.glob("step-*.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    found = complete(directory)
    return found[-1] if found else None


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


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
