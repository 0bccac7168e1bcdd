"""Training on several processes with PyTorch's own stack: torchrun starts them, DDP or FSDP2 wraps the model.

The recipe stays one (``entrypoints.train``) with a world size; this module holds what only several
processes need:

* **Launch** (``launch``): the entrypoint, started once per node by the platform, runs torchrun for its
  node (``torch.distributed.run``, in this process) with the arguments ``platform.World`` derives from
  SM_HOSTS / SM_CURRENT_HOST / SM_NUM_GPUS, CLUSTER_SPEC and MASTER_ADDR / MASTER_PORT, or the local
  backend's ``--gpus``. Each worker runs the same entrypoint, which sees torchrun's RANK / LOCAL_RANK /
  WORLD_SIZE and trains. Exit codes come back as the recipe's: 2 bad input, 75 interrupted (a SIGTERM
  is forwarded to the workers by torchrun, which checkpoint first), else 1.
* **Process group** (``init``): NCCL on GPUs (one per local rank), gloo on the CPU.
* **Wrapping** (``wrap``): DDP, or FSDP2 with ``fully_shard`` on every decoder layer and then on the
  step's loss module (the root), which holds the embeddings, the final norm and the output head.
  Whatever is wrapped is the module the step calls (``fast.StepLoss``), so the fast path's own
  forward goes through the wrapper too.
* **Agreement**: ``all_reduce`` (sum, max), ``broadcast`` and ``gather`` of small host values, so every
  rank takes the same decisions (the step's target tokens, a stop request, the micro-batch budget, the
  checkpoint to resume).
* **State** (``trainable_state``, ``optimizer_state``, ``load_optimizer_state``): gathered into whole
  tensors on rank 0 for saving and resharded from whole tensors when loading, with
  ``torch.distributed.checkpoint.state_dict``: a checkpoint is the one-process format, so it resumes on
  any world size.
* **Sharding a step** (``shard_step``): every rank a disjoint part of each optimizer step, balanced by
  tokens, in the same number of micro-batches.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def under_torchrun(env: dict[str, str] | None = None) -> bool:
    """Whether this process is a torchrun worker (torchrun sets both for every worker it starts)."""
    env = os.environ if env is None else env
    return "TORCHELASTIC_RUN_ID" in env and "LOCAL_RANK" in env


@dataclass(frozen=True)
class Ranks:
    """This process's place among the job's processes (one process: rank 0 of 1, no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized: bool = False  # a process group exists (every torchrun worker, even a world of one)

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0


def init(device: str) -> Ranks:
    """Join the process group torchrun describes (NCCL with one GPU per local rank, gloo on the CPU);
    a plain process stays alone."""
    if not under_torchrun():
        return Ranks()
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ["LOCAL_RANK"])
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        kwargs = {"device_id": torch.device("cuda", local_rank)} if device == "cuda" else {}
        dist.init_process_group("nccl" if device == "cuda" else "gloo", **kwargs)
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank, initialized=True)


def close() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def procs_per_node(requested: int | None) -> int:
    """Processes to start on this node: as the platform or launcher asks, else one per visible GPU."""
    if requested:
        return requested
    import torch

    return max(1, torch.cuda.device_count())


def launch(args: list[str], argv: list[str], module: str = "entrypoints.train") -> int:
    """Run ``torchrun ARGS -m MODULE ARGV`` for this node in this process; the recipe's exit code."""
    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from launcher.spec import INTERRUPTED_EXIT_CODE

    command = [*args, "--module", module, *argv]
    print(f"torchrun {' '.join(command)}", flush=True)
    try:
        run.main(command)
    except SignalException:  # torchrun passed the signal on; the workers checkpointed at a step boundary
        return INTERRUPTED_EXIT_CODE
    except ChildFailedError as exc:
        codes = {failure.exitcode for failure in exc.failures.values()}
        for code in (2, INTERRUPTED_EXIT_CODE):
            if code in codes:
                return code
        return 1
    return 0


# --- wrapping -------------------------------------------------------------------------------------------
def wrap(module, strategy: str, device: str, layers: Sequence[Any]):
    """``module`` (the step's loss module) under DDP, or under FSDP2 with every decoder layer in
    ``layers`` sharded on its own and ``module`` as the root."""
    import torch

    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in layers:
            fully_shard(layer)
        fully_shard(module)
        return module
    from torch.nn.parallel import DistributedDataParallel

    # Buffers (rotary frequencies) are the same everywhere: broadcasting them would make every
    # forward, evaluation's included, a collective.
    ids = [torch.cuda.current_device()] if device == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def no_sync(wrapped, sync: bool):
    """A context in which backward accumulates gradients locally (``sync`` False) or reduces them
    across ranks (the optimizer step's last micro-batch)."""
    import contextlib

    from torch.nn.parallel import DistributedDataParallel

    if isinstance(wrapped, DistributedDataParallel):
        return contextlib.nullcontext() if sync else wrapped.no_sync()
    if hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2
        wrapped.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def unsharded(wrapped):
    """A context in which the FSDP root's own parameters (embeddings, head) stay gathered, for calls
    that do not go through its forward (``generate``); nothing for DDP."""
    import contextlib

    @contextlib.contextmanager
    def gathered():
        wrapped.unshard()
        try:
            yield
        finally:
            wrapped.reshard()

    return gathered() if hasattr(wrapped, "unshard") else contextlib.nullcontext()


# --- agreement --------------------------------------------------------------------------------------------
def all_reduce(values: Sequence[float], op: str = "sum", device: str = "cpu") -> list[float]:
    """``values`` summed (or maxed) over every rank, on the host; the values themselves alone."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor.tolist()


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


# --- state ----------------------------------------------------------------------------------------------
def _whole_cpu():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Whole tensors, on rank 0 only (the others get nothing), in host memory.
    return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def trainable_state(model) -> dict:
    """The trainable parameters (the adapter) as whole tensors by parameter name on rank 0, empty
    elsewhere; collective (FSDP's shards are gathered)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_whole_cpu())


def optimizer_state(model, optimizer) -> dict:
    """The optimizer's state as whole tensors keyed by parameter name, on rank 0; collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_whole_cpu())


def load_optimizer_state(model, optimizer, state: dict) -> None:
    """Load a saved optimizer state (whole tensors keyed by name) into this rank's shards. A
    checkpoint from before names were used (keyed by position) loads as it was saved."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if all(isinstance(key, int) for key in state.get("state", {})) and state.get("param_groups") and \
            all(isinstance(p, int) for p in state["param_groups"][0]["params"]):
        optimizer.load_state_dict(state)
        return
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=dist.is_initialized()))


# --- sharding a step ------------------------------------------------------------------------------------
def shard_step(sizes: Sequence[int], world_size: int) -> list[list[int]]:
    """Indices into ``sizes`` (an optimizer step's examples or rows, in tokens) for each rank: disjoint,
    together all of them, balanced by tokens (the largest first, each to the rank with the fewest
    tokens so far; ties to the lower rank). The same on every rank: it depends only on ``sizes``."""
    shards: list[list[int]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(world_size), key=lambda r: (load[r], len(shards[r]), r))
        shards[rank].append(index)
        load[rank] += sizes[index]
    return [sorted(shard) for shard in shards]

