"""The GPU fast path: padding-free packed micro-batches with per-example attention, fused kernels,
a fused (or chunked) linear cross-entropy, and a token budget sized from measured GPU memory.

What it does, and why each piece is here:

* **Packing by tokens.** Examples are packed first-fit-decreasing into rows of exactly
  ``micro_batch_tokens`` tokens; one row is one micro-batch. No padding inside a row, static shapes
  (compiled kernels are built once), and the GEMMs are as large as memory allows.
* **Per-example attention.** A FlexAttention ``BlockMask`` built from document ids: a token sees only
  earlier tokens of its own example, and fully masked blocks are skipped, so attention cost follows the
  examples' own lengths. (Reset position ids alone leak across examples in transformers 5.x.)
* **Fused kernels** (Liger-Kernel, when installed): RMSNorm, RoPE and SwiGLU, and the fused linear
  cross-entropy, which never materialises the ``tokens x vocab`` logits. Without Liger the loss is a
  chunked, recomputed linear cross-entropy in plain PyTorch with the same memory shape.
* **No fp32 copies of activations.** peft casts each LoRA layer's input to the adapter's fp32 dtype
  (a full fp32 copy of every adapted activation, kept for backward); under bf16 autocast the LoRA
  matmuls run in bf16 anyway, so the cast is switched off.
* **Token budget from memory.** A probe step measures the bytes each token costs (activations scale
  with tokens under a block-sparse mask); the budget is the largest multiple of 128 tokens that fits
  the memory target. Gradient checkpointing is switched on only when not even one ``max_seq_len``
  example fits without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

BLOCK = 128  # FlexAttention's block size: budgets are multiples of it


def round_up(tokens: int) -> int:
    """``tokens`` rounded up to a whole number of attention blocks."""
    return -(-tokens // BLOCK) * BLOCK


def liger_available() -> bool:
    try:
        import liger_kernel  # noqa: F401
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def apply_liger(model_type: str) -> bool:
    """Patch the architecture's RMSNorm, RoPE and SwiGLU with Liger kernels before the model is built.
    The loss is computed by ``linear_cross_entropy``, so Liger's own loss patches stay off."""
    if not liger_available():
        return False
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    apply = MODEL_TYPE_TO_APPLY_LIGER_FN.get(model_type)
    if apply is None:
        return False
    import inspect

    wanted = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False, "fused_linear_cross_entropy": False}
    accepted = inspect.signature(apply).parameters
    apply(**{k: v for k, v in wanted.items() if k in accepted})
    return True


def disable_lora_input_upcast(model) -> None:
    """Stop peft from copying each adapted activation to fp32 (see module docstring)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, use_liger: bool, chunk: int = 4096) -> torch.Tensor:
    """Sum of cross-entropies of ``hidden @ weight.T`` against ``targets`` (IGNORE = -100 skipped),
    without keeping the full logits."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    if use_liger:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        return LigerFusedLinearCrossEntropyLoss(reduction="sum", ignore_index=-100)(weight, hidden, targets)
    return chunked_linear_cross_entropy(hidden, weight, targets, chunk)


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = torch.nn.functional.linear(hidden, weight).float()
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")


def chunked_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Plain-PyTorch fallback: logits of one chunk at a time, recomputed in backward."""
    from torch.utils.checkpoint import checkpoint

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        part = targets[start : start + chunk]
        if bool((part != -100).any()):
            total = total + checkpoint(_chunk_loss, hidden[start : start + chunk], weight, part, use_reentrant=False)
    return total


def choose_budget(
    probe: Callable[[int], int], *, probe_tokens: int, max_seq_len: int, available_bytes: int, cap: int = 65536
) -> tuple[int, int]:
    """(micro_batch_tokens, bytes_per_token): the largest multiple of BLOCK tokens whose measured
    activation memory fits ``available_bytes`` (never below one ``max_seq_len`` example)."""
    used = probe(probe_tokens)
    per_token = max(1, math.ceil(used / probe_tokens))
    budget = int(available_bytes // per_token) // BLOCK * BLOCK
    floor = round_up(max_seq_len)
    return max(floor, min(cap, budget)), per_token
