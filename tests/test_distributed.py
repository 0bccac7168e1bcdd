"""Training on two processes (torchrun, gloo, the CPU) gives the one-process adapter: DDP, and FSDP2
killed and resumed; only rank 0 writes; bad world sizes are refused before anything starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import SMALL_HP, summary_records, write_jsonl
from safetensors.torch import load_file

from entrypoints import distributed, platform, train
from launcher.spec import INTERRUPTED_EXIT_CODE, TrainConfig

# 36 training examples packed into rows, 8 rows a step: 15 optimizer steps over 3 epochs, the last step of each epoch
# short (so some ranks get padding micro-batches).
HP = {**SMALL_HP, "epochs": "3", "micro_batch_size": "4", "gradient_accumulation_steps": "2", "eval_samples": "1",
      "review_samples": "1", "max_new_tokens": "4", "checkpoint_every": "2", "logging_steps": "1", "keep_checkpoints": "20"}
FAST = {"fast_path": "on", "micro_batch_tokens": "256"}


def layout(root, **hp):
    write_jsonl(root / "input/data/train/train.jsonl", summary_records(40, seed=5))
    (root / "input/config").mkdir(parents=True, exist_ok=True)
    (root / "input/config/hyperparameters.json").write_text(json.dumps({**HP, **hp}))
    return root


def adapter(root):
    return load_file(str(root / "model" / "adapter_model.safetensors"))


def assert_same(got, want):
    assert got.keys() == want.keys()
    for key in want:  # two ranks sum the step's gradient in another order than one: float32 rounding apart
        torch.testing.assert_close(got[key], want[key], atol=2e-4, rtol=0, msg=key)


def one_process(root):
    plat = platform.detect(["--root", str(root)])
    train.run(plat, TrainConfig.from_mapping(plat.hyperparameters), install_signals=False)
    return adapter(root)


def two_processes(root, **popen):
    """The entrypoint as the local backend starts it with --gpus 2 (on the CPU: LAUNCHER_DEVICE=cpu)."""
    env = {**os.environ, "LAUNCHER_NPROC_PER_NODE": "2", "LAUNCHER_DEVICE": "cpu", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "entrypoints.train", "--root", str(root)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


@pytest.mark.slow
def test_two_ddp_processes_train_the_one_process_adapter_and_rank_0_alone_writes(tmp_path):
    want = one_process(layout(tmp_path / "one"))
    root = layout(tmp_path / "two")
    proc = two_processes(root)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    assert_same(adapter(root), want)
    metrics = json.loads((root / "model/metrics.json").read_text())
    assert (metrics["train"]["processes"], metrics["train"]["distributed"], metrics["train"]["steps"]) == (2, "ddp", 15)
    assert "torchrun --standalone --nproc-per-node=2 --module entrypoints.train" in out
    # One writer: each line of the job's log and each checkpoint once, nothing half-written left.
    for line in ("distributed: DDP over 2 processes", "checkpoint step-00000002", "adapter saved in", "done: model in"):
        assert out.count(line) == 1, (line, out)
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == [f"step-{s:08d}" for s in (*range(2, 15, 2), 15)]


@pytest.mark.slow
def test_fsdp_fast_path_killed_and_resumed_on_two_processes_ends_with_the_one_process_adapter(tmp_path):
    want = one_process(layout(tmp_path / "one", **FAST))
    root = layout(tmp_path / "two", **FAST, distributed="fsdp")
    proc = two_processes(root)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("step 2/"):
            proc.send_signal(signal.SIGTERM)  # a spot interruption: to the launcher, which passes it on
            break
    out = "".join(seen) + proc.communicate(timeout=300)[0]
    assert proc.returncode == INTERRUPTED_EXIT_CODE, out
    assert "distributed: FSDP over 2 processes" in out and not (root / "model/metrics.json").exists()
    stopped = max(int(p.name.removeprefix("step-")) for p in (root / "checkpoints").iterdir())
    assert 2 <= stopped < 15
    proc = two_processes(root)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0 and f"resumed from step-{stopped:08d}" in out, out
    assert_same(adapter(root), want)


def test_a_world_size_that_does_not_divide_the_step_is_refused_before_anything_starts(tmp_path, capsys, monkeypatch):
    root = layout(tmp_path / "job")
    monkeypatch.setenv("LAUNCHER_NPROC_PER_NODE", "3")
    monkeypatch.setenv("LAUNCHER_DEVICE", "cpu")
    assert train.main(["--root", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["Error: an optimizer step of micro_batch_size x gradient_accumulation_steps = 8 rows cannot be split evenly "
                   "over 3 processes. To fix: gradient_accumulation_steps: 3 (or a world size that divides 8)"]
    assert not (root / "model").exists() and not (root / "checkpoints").exists()


def test_each_rank_gets_a_disjoint_token_balanced_share_of_the_step():
    sizes = [90, 10, 40, 40, 30, 20, 5]
    shards = distributed.shard_step(sizes, 2)
    assert sorted(i for s in shards for i in s) == list(range(len(sizes)))
    assert [sum(sizes[i] for i in s) for s in shards] == [120, 115]
    assert distributed.shard_step([7, 3], 4) == [[0], [1], [], []]  # a short last step: some ranks only pad
