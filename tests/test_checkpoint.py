"""Checkpoint completeness: a folder counts only with its completion marker and every file it lists,
as SageMaker's and Cloud Storage FUSE's file-by-file syncs can restore a folder with files missing."""

from __future__ import annotations

import json

import torch

from entrypoints import checkpoint


def save(directory, step, keep=5):
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": [checkpoint.rng_state()]}
    return checkpoint.save(directory, step, adapter={"w": weight}, state=state, position={"step": step}, keep=keep)


def test_the_marker_lists_every_file_and_is_written_last(tmp_path):
    path = save(tmp_path, 4)
    marker = json.loads((path / checkpoint.MARKER).read_text())
    assert set(marker["files"]) == {"adapter.safetensors", "state.pt", "position.json"}
    assert all((path / name).stat().st_size == size for name, size in marker["files"].items())
    assert checkpoint.latest(tmp_path) == path


def test_newer_partial_checkpoints_are_skipped_with_a_warning(tmp_path):
    older, missing_file, short_file, no_marker = (save(tmp_path, step) for step in (4, 8, 12, 16))
    (missing_file / "state.pt").unlink()
    with (short_file / "adapter.safetensors").open("r+b") as handle:
        handle.truncate(10)
    (no_marker / checkpoint.MARKER).unlink()  # a restore that had not reached the marker (or an old-style folder)
    warnings = []
    assert checkpoint.latest(tmp_path, warn=warnings.append) == older
    assert warnings == [
        "warning: checkpoint step-00000016 is incomplete (no readable complete.json): skipped",
        "warning: checkpoint step-00000012 is incomplete (adapter.safetensors has 10 of "
        f"{json.loads((short_file / checkpoint.MARKER).read_text())['files']['adapter.safetensors']} bytes): skipped",
        "warning: checkpoint step-00000008 is incomplete (state.pt missing): skipped",
    ]
    assert checkpoint.complete(tmp_path) == [older]
    # The next complete checkpoint supersedes the partial ones, and pruning counts complete ones only.
    newest = save(tmp_path, 20, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [newest.name]
