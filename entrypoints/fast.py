"""The GPU fast path: padding-free packed micro-batches with per-example attention, fused kernels,
a fused (or chunked) linear cross-entropy, and a token budget sized from measured GPU memory.

What it does, and why each piece is here:

* **Packing by tokens.** The spec decides each optimizer step's examples (``Recipe.epoch_windows``); the
  fast path packs them first-fit-decreasing into as few rows of at most ``micro_batch_tokens`` tokens as
  hold them, one row a micro-batch: no padding inside a row (only up to a whole 128-token block), and
  GEMMs as large as memory and the step allow.
* **Per-example attention.** A token sees only earlier tokens of its own example, and no work is done
  across examples, so attention cost follows the examples' own lengths. (Reset position ids alone leak
  across examples in transformers 5.x.) Two kernels: PyTorch's FlashAttention varlen kernel, given the
  examples' offsets (``varlen_attention``; the default where torch has it), or FlexAttention with a
  ``BlockMask`` built from document ids. Measured on an H200 (2026-11-28, 25,600-token
  micro-batches): varlen 17,552 tokens/s, FlexAttention 16,760 (its backward took 12% of the step).
* **Logits only where there is a target.** Prompt tokens have no target, so their hidden states skip
  the output head (picked on the host: no device sync).
* **Fused kernels** (Liger-Kernel, when installed): RMSNorm, RoPE and SwiGLU, and the fused linear
  cross-entropy, which never materialises the ``tokens x vocab`` logits. Without Liger the loss is a
  chunked, recomputed linear cross-entropy in plain PyTorch with the same memory shape. Either applies
  final-logit soft-capping (Gemma-2) and, with a LoRA on ``lm_head``, the adapter (chunked only).
* **No fp32 copies of activations.** peft casts each LoRA layer's input to the adapter's fp32 dtype
  (a full fp32 copy of every adapted activation, kept for backward); under bf16 autocast the LoRA
  matmuls run in bf16 anyway, so the cast is switched off.
* **Adapters added inside the GEMMs.** peft computes ``result + lora_B(lora_A(x)) * scaling`` as a
  matmul, a scale and an add, each a full pass over the layer's output (QLoRA clones the result
  first), and autograd adds the adapter's input gradient to the base's in another pass.
  ``fuse_lora`` routes each adapted layer through one autograd function (``_LoraGroup``) that writes
  the adapter's output first and lets the base GEMM add onto it (``beta``), and accumulates the input
  gradient in place inside the GEMMs: ``dx = (dh @ A).addmm_(dy, W)``. Siblings fed the same tensor
  (q/k/v, gate/up) share one such function: one GEMM for all their A's, and one input gradient for
  all of them, with no separate additions. Out-of-place ``addmm`` copies its addend first (measured
  at 4% of an H200 step).
* **Optional float8 base matmuls** (``fp8: on``, LoRA on compute capability 8.9+): the frozen bf16
  weights are also kept in float8 with per-channel scales, and the base's forward and input-gradient
  GEMMs run through ``torch._scaled_mm`` with per-token scales (row-wise: measured 3% faster than one
  scale per tensor, and a loud token cannot crush the others' precision). Measured on an H200: +23%
  (21,531 tokens/s against 17,552) with a 0.04% eval-loss gap on the benchmark's synthetic task. Off by default: it
  changes the base's arithmetic, which a synthetic task cannot vouch for on a real checkpoint.
* **Token budget from memory** (``size_micro_batches``, which the recipe calls once the model is
  built). A probe step (``probe_memory``) measures the bytes each token costs (activations scale with
  tokens under a block-sparse mask); the budget is the largest multiple of 128 tokens that fits the
  GPU. Gradient checkpointing "auto" is switched on only when not even one ``max_seq_len`` example
  fits without it; QLoRA (and ``max_memory_gib``) fit a budget and a number of checkpointed layers
  within a memory target (``memory_target``, ``fit_layers``), measured by three probes, toggling
  checkpointing per decoder layer (``checkpoint_layers``). The recipe keeps what is its own state:
  an explicit ``micro_batch_tokens``, the budget and layer count a resumed checkpoint remembers, and
  the CPU's fixed budget.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from launcher import memory
from launcher.errors import SpecError

if TYPE_CHECKING:
    from launcher.spec import TrainConfig

BLOCK = 128  # FlexAttention's block size: budgets are multiples of it
# Micro-batch tokens at most: past ~16-32k the matmuls gain nothing; QLoRA keeps the smaller cap (it is
# chosen for memory).
BUDGET_CAP = {"lora": 32768, "qlora": 16384}


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
    wanted = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False, "fused_linear_cross_entropy": False}
    accepted = inspect.signature(apply).parameters
    apply(**{k: v for k, v in wanted.items() if k in accepted})
    return True


VARLEN = "launcher_varlen"  # the attention implementation's name in transformers' registry


@functools.cache
def _varlen_parameters() -> frozenset[str]:
    """The keyword parameters of this torch's ``varlen_attn`` (empty where it has none)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return frozenset()
    return frozenset(inspect.signature(varlen_attn).parameters)


def varlen_available() -> bool:
    """PyTorch's own FlashAttention varlen kernel (``torch.nn.attention.varlen``, torch >= 2.10 with
    ``scale`` and ``window_size``) on an Ampere or newer GPU."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        return False
    return {"scale", "window_size"} <= _varlen_parameters()


def register_varlen() -> str:
    """Register ``varlen_attention`` with transformers (and no mask: the sequence offsets are the
    mask); returns the name to pass as ``attn_implementation``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention)
    AttentionMaskInterface.register(VARLEN, lambda *args, **kwargs: None)
    return VARLEN


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, *, cu_seq_lens_q=None,
                     max_length_q=None, sliding_window=None, softcap=None, **kwargs):
    """A transformers attention function: causal attention within each packed example, the examples
    given by ``cu_seq_lens_q`` offsets into the flattened batch (``sequences.cu_seqlens``). Each token
    attends to earlier tokens of its own example only (and, in a layer with a ``sliding_window``, to
    the last ``sliding_window`` of them, itself included, as transformers' masks do), and the kernel
    does no work across examples. On a GPU it runs PyTorch's FlashAttention varlen kernel; elsewhere,
    example by example with SDPA."""
    if cu_seq_lens_q is None or max_length_q is None:
        raise ValueError(f"{VARLEN} attention needs cu_seq_lens_q and max_length_q (the packed examples' offsets)")
    if dropout:
        raise ValueError(f"{VARLEN} attention has no dropout (got {dropout}); set the model's attention_dropout to 0")
    if softcap is not None:  # the recipe picks FlexAttention for such models; never silently skip it
        raise ValueError(f"{VARLEN} attention cannot soft-cap attention scores (softcap {softcap})")
    left = -1 if sliding_window is None else sliding_window - 1
    batch, heads, length, dim = query.shape
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (query, key, value))
    if q.is_cuda:
        from torch.nn.attention.varlen import varlen_attn

        gqa = {"enable_gqa": True} if "enable_gqa" in _varlen_parameters() else {}  # torch >= 2.12 asks for it
        out = varlen_attn(q, k, v, cu_seq_lens_q, cu_seq_lens_q, max_length_q, max_length_q, scale=scaling,
                          window_size=(left, 0), **gqa)
    else:
        bounds = cu_seq_lens_q.tolist()

        def mask(n: int) -> torch.Tensor:  # causal, within the window
            distance = torch.arange(n)[:, None] - torch.arange(n)[None, :]
            return (distance >= 0) & ((distance <= left) if left >= 0 else True)

        out = torch.cat([
            torch.nn.functional.scaled_dot_product_attention(
                q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), attn_mask=mask(b - a).to(q.device),
                scale=scaling, enable_gqa=True).transpose(0, 1)
            for a, b in zip(bounds, bounds[1:])
        ])
    return out.view(batch, length, heads, dim), None


def disable_lora_input_upcast(model) -> None:
    """Stop peft from copying each adapted activation to fp32 (see module docstring)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False


GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # siblings fed the same tensor


def fuse_lora(model, fp8: bool = False) -> int:
    """Route every plain LoRA linear layer (one adapter, no DoRA or other variant) through
    ``_fused_lora_forward``; returns how many layers it covers. Siblings named in ``GROUPS`` (q/k/v,
    gate/up) are computed together when called with the same tensor (``_Siblings``). ``fp8``: the
    frozen bf16 base layers multiply in float8 (``Fp8Weight``); 4-bit bases keep their own kernels."""
    import types

    from peft.tuners.lora import layer as lora_layer

    kinds = [lora_layer.Linear]
    try:
        from peft.tuners.lora.bnb import Linear4bit

        kinds.append(Linear4bit)
    except ImportError:  # bitsandbytes not installed
        pass
    count = 0
    for module in model.modules():
        if (type(module) in kinds and not module.lora_variant and not module.fan_in_fan_out
                and all(b.bias is None for b in module.lora_B.values())):
            module.forward = types.MethodType(_fused_lora_forward, module)
            if fp8 and type(module.base_layer) is torch.nn.Linear:
                module.launcher_fp8 = Fp8Weight(module.base_layer.weight)
            count += 1
    for parent in model.modules():
        for names in GROUPS:
            members = [getattr(parent, name, None) for name in names]
            if all(getattr(m, "forward", None) is not None and getattr(m.forward, "__func__", None) is _fused_lora_forward
                   for m in members):
                siblings = _Siblings(members)
                for m in members:
                    m.launcher_siblings = siblings
    return count


def _plain_adapter(layer) -> str | None:
    """The one active adapter's name, if the layer can take the fused path; else None (peft's code)."""
    adapters = [a for a in layer.active_adapters if a in layer.lora_A]
    if layer.disable_adapters or layer.merged or len(adapters) != 1 or layer.base_layer.weight.requires_grad:
        return None
    return adapters[0]


def _fused_lora_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    name = None if args or kwargs else _plain_adapter(self)
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)  # anything unusual: peft's own code
    siblings = getattr(self, "launcher_siblings", None)
    if siblings is not None:
        out = siblings.output(self, x)
        if out is not None:
            return out
    dropout = self.lora_dropout[name]
    if isinstance(dropout, torch.nn.Identity):
        return _LoraGroup.apply(x, *_group_inputs([self], [name]))[0]
    return _LoraLinear.apply(x, dropout(x), self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name],
                             self.base_layer, getattr(self, "launcher_fp8", None))


def _group_inputs(layers: list, names: list[str]) -> tuple:
    """``_LoraGroup``'s arguments after ``x``: (scaling, base layer, Fp8Weight or None) per layer, then
    each layer's A and B weights."""
    meta = tuple((m.scaling[n], m.base_layer, getattr(m, "launcher_fp8", None)) for m, n in zip(layers, names))
    return (meta, *(w for m, n in zip(layers, names) for w in (m.lora_A[n].weight, m.lora_B[n].weight)))


class _Siblings:
    """LoRA layers that a model calls one after another with the same tensor (q, k, v): the first
    call computes them all in one ``_LoraGroup`` (one pass over the input for the adapters' A, one
    input gradient accumulated in place), the others' calls take their outputs. A sibling called with
    another tensor, or out of order, computes alone."""

    def __init__(self, members: list):
        self.members, self.pending = members, {}

    def output(self, layer, x: torch.Tensor) -> torch.Tensor | None:
        index = self.members.index(layer)
        held = self.pending.pop(index, None)
        if held is not None and held[0] is x:
            return held[1]
        self.pending.clear()
        names = [_plain_adapter(m) for m in self.members]
        if index != 0 or None in names or any(not isinstance(m.lora_dropout[n], torch.nn.Identity) for m, n in zip(self.members, names)):
            return None
        outs = _LoraGroup.apply(x, *_group_inputs(self.members, names))
        self.pending = {i: (x, out) for i, out in enumerate(outs) if i}
        return outs[0]


def _frozen_weight(base: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    weight = base.weight
    if hasattr(weight, "quant_state"):  # bitsandbytes 4-bit: dequantised per use, as its own backward does
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(weight.data, weight.quant_state).to(dtype)
    return weight.to(dtype)


def _autocast_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype


def _base_plus_adapter(x2: torch.Tensor, low_rank: torch.Tensor, b: torch.Tensor, scaling: float, base, fp8) -> torch.Tensor:
    """``base(x2) + scaling * low_rank @ B.T`` for a (tokens x in) input in the matmul dtype, the
    adapter added inside a GEMM."""
    if fp8 is None and type(base) is torch.nn.Linear and base.bias is None:
        # The adapter's output first, then the base GEMM adds onto it in its epilogue (beta): the
        # output makes one memory-bound pass, not two (write, then read and write again).
        return (low_rank @ b.t()).addmm_(x2, base.weight.to(x2.dtype).t(), beta=scaling)
    result = base(x2) if fp8 is None else fp8.forward(x2, base.bias)
    # In place: ``result`` is this call's own fresh tensor, and addmm out of place would first copy it.
    return result.to(x2.dtype).addmm_(low_rank, b.t(), alpha=scaling)


def _add_base_input_grad(grad_x: torch.Tensor, dy: torch.Tensor, base, fp8) -> torch.Tensor:
    """``grad_x += dy @ W`` in place (inside the GEMM, or for float8 after it)."""
    if fp8 is not None:
        return grad_x.add_(fp8.input_grad(dy))
    return grad_x.addmm_(dy, _frozen_weight(base, grad_x.dtype))


class _LoraGroup(torch.autograd.Function):
    """``base_i(x) + scaling_i * x @ A_i.T @ B_i.T`` for frozen base layers sharing the input ``x``
    (one layer, or siblings such as q/k/v), without dropout. Forward: one GEMM for every adapter's A,
    then each output with its adapter added inside the base GEMM. Backward: one GEMM for every A's
    gradient, and the input gradient ``sum_i (dh_i @ A_i + dy_i @ W_i)`` accumulated in place inside
    the GEMMs. Matmuls run in the autocast dtype, as peft's would. ``layers``: (scaling, base layer,
    Fp8Weight or None) per output; ``weights``: A_1, B_1, A_2, B_2, ..."""

    @staticmethod
    def forward(ctx, x, layers, *weights):
        dtype = _autocast_dtype(x)
        a_all = torch.cat([w.to(dtype) for w in weights[0::2]])
        bs = [w.to(dtype) for w in weights[1::2]]
        ranks = [w.shape[0] for w in weights[0::2]]
        x2 = x.reshape(-1, x.shape[-1]).to(dtype)
        low = x2 @ a_all.t()
        outs = [_base_plus_adapter(x2, low_i, b, scaling, base, fp8).view(*x.shape[:-1], b.shape[0])
                for low_i, b, (scaling, base, fp8) in zip(low.split(ranks, 1), bs, layers)]
        ctx.save_for_backward(x2, low, a_all, *bs)
        ctx.layers, ctx.ranks, ctx.x_shape, ctx.dtypes = layers, ranks, (x.shape, x.dtype), [w.dtype for w in weights]
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grad_outs):
        x2, low, a_all, *bs = ctx.saved_tensors
        dys, d_lows, grads = [], [], []
        for grad, low_i, b, (scaling, _, _) in zip(grad_outs, low.split(ctx.ranks, 1), bs, ctx.layers):
            dy = torch.zeros(x2.shape[0], b.shape[0], dtype=b.dtype, device=b.device) if grad is None else grad.reshape(-1, grad.shape[-1]).to(b.dtype)
            dys.append(dy)
            d_lows.append((dy @ b) * scaling)
            grads.append((dy.t() @ low_i) * scaling)
        d_low = torch.cat(d_lows, 1)
        grad_as = (d_low.t() @ x2).split(ctx.ranks, 0)
        pairs = (g for grad_a, grad_b in zip(grad_as, grads) for g in (grad_a, grad_b))
        weight_grads = [g.to(dtype) for g, dtype in zip(pairs, ctx.dtypes)]
        grad_x = None  # skipped when not needed (the first layer's input, say)
        if ctx.needs_input_grad[0]:
            grad_x = d_low @ a_all
            for dy, (_, base, fp8) in zip(dys, ctx.layers):
                grad_x = _add_base_input_grad(grad_x, dy, base, fp8)
            shape, dtype = ctx.x_shape
            grad_x = grad_x.view(shape).to(dtype)
        return (grad_x, None, *weight_grads)


class _LoraLinear(torch.autograd.Function):
    """One layer with LoRA dropout: ``base(x) + scaling * drop(x) @ A.T @ B.T``, the adapter's output
    added inside a GEMM. Matmuls run in the autocast dtype, as peft's would."""

    @staticmethod
    def forward(ctx, x, dropped, weight_a, weight_b, scaling, base, fp8=None):
        dtype = _autocast_dtype(x)
        dropped = dropped.to(dtype)
        a, b = weight_a.to(dtype), weight_b.to(dtype)
        low_rank = dropped.reshape(-1, dropped.shape[-1]) @ a.t()
        out = _base_plus_adapter(x.reshape(-1, x.shape[-1]).to(dtype), low_rank, b, scaling, base, fp8)
        ctx.save_for_backward(dropped, low_rank, a, b)
        ctx.scaling, ctx.base, ctx.fp8 = scaling, base, fp8
        ctx.dtypes = (x.dtype, weight_a.dtype, weight_b.dtype)
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        dropped, low_rank, a, b = ctx.saved_tensors
        x_dtype, a_dtype, b_dtype = ctx.dtypes
        dy = grad_out.reshape(-1, grad_out.shape[-1]).to(a.dtype)
        d_low = (dy @ b) * ctx.scaling
        grad_b = ((dy.t() @ low_rank) * ctx.scaling).to(b_dtype)
        grad_a = (d_low.t() @ dropped.reshape(-1, dropped.shape[-1])).to(a_dtype)
        shape = (*grad_out.shape[:-1], a.shape[1])
        grad_x = grad_dropped = None
        if ctx.needs_input_grad[0]:
            grad_x = ctx.fp8.input_grad(dy) if ctx.fp8 is not None else dy @ _frozen_weight(ctx.base, a.dtype)
            grad_x = grad_x.view(shape).to(x_dtype)
        if ctx.needs_input_grad[1]:
            grad_dropped = (d_low @ a).view(shape)
        return grad_x, grad_dropped, grad_a, grad_b, None, None, None


FP8_MAX = 448.0  # the largest finite float8_e4m3fn


def fp8_available() -> bool:
    """float8 GEMMs (``torch._scaled_mm``) need compute capability 8.9 or newer (L4, L40S, H100, H200)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9) and hasattr(torch, "_scaled_mm")


def to_fp8_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` (rows x k) as float8_e4m3fn with one fp32 scale per row (rows x 1): row / scale fills
    [-448, 448]. All-zero rows get scale 1."""
    amax = t.abs().amax(dim=-1, keepdim=True).float()
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    # Row-major whatever ``t``'s layout (a transposed weight, say): cuBLASLt's float8 GEMM takes no other.
    return (t.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).contiguous(), scale


_fused_rows: Callable | None = None


def _activation_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``to_fp8_rows`` for activations and gradients. On a GPU it is compiled into one fused kernel,
    with dynamic shapes: compiled per shape, the GEMMs' many input shapes exceed dynamo's recompile
    limit and it falls back to eager, six passes over an fp32 copy (measured: no faster than bf16)."""
    global _fused_rows
    if t.device.type != "cuda":
        return to_fp8_rows(t)
    if _fused_rows is None:
        _fused_rows = torch.compile(to_fp8_rows, dynamic=True)
    return _fused_rows(t.detach())


class Fp8Weight:
    """A frozen weight W (out x in) kept twice in float8 with per-row scales: as W for the forward
    (``x @ W.T``, scaled per output channel) and as W.T for the input gradient (``dy @ W``, scaled per
    input channel), so each GEMM's scales lie outside its contraction, as ``torch._scaled_mm``'s
    row-wise scaling needs. Activations and gradients are scaled per token. The two float8 copies take
    as much memory as the bf16 weight, which stays for evaluation, generation and merging."""

    def __init__(self, weight: torch.Tensor):
        with torch.no_grad():
            self.w, self.w_scale = to_fp8_rows(weight)
            self.wt, self.wt_scale = to_fp8_rows(weight.t())

    @staticmethod
    def _mm(a: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor, bias=None) -> torch.Tensor:
        a2 = a.reshape(-1, a.shape[-1])
        aq, a_scale = _activation_rows(a2)
        out = torch._scaled_mm(aq, b.t(), scale_a=a_scale, scale_b=b_scale.t(), out_dtype=a.dtype,
                               bias=None if bias is None else bias.to(a.dtype))
        return out.view(*a.shape[:-1], out.shape[-1])

    def forward(self, x: torch.Tensor, bias=None) -> torch.Tensor:
        return self._mm(x, self.w, self.w_scale, bias)

    def input_grad(self, dy: torch.Tensor) -> torch.Tensor:
        return self._mm(dy, self.wt, self.wt_scale)


class StepLoss(torch.nn.Module):
    """The recipe's forward as one module: the sum of a batch's target-token losses. On several
    processes this is what DDP or FSDP wraps, so every forward, the fast path's included, goes through
    the wrapper (its gradient hooks, its parameter gathering). Fast path: the decoder's hidden states,
    then the output head only where there is a target (``keep``: those positions, picked on the host)
    through ``linear_cross_entropy``; standard path: the model's logits and a cross-entropy."""

    def __init__(self, model, *, fast: bool, use_liger: bool = False, softcap: float | None = None):
        super().__init__()
        self.model, self.fast, self.use_liger, self.softcap = model, fast, use_liger, softcap

    def forward(self, input_ids, targets, position_ids, keep, attention: dict) -> torch.Tensor:
        from entrypoints.sequences import IGNORE

        if not self.fast:
            logits = self.model(input_ids=input_ids, position_ids=position_ids, **attention).logits
            return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                                                     reduction="sum")
        base = self.model.get_base_model()
        hidden = base.get_decoder()(input_ids=input_ids, position_ids=position_ids, **attention).last_hidden_state
        return linear_cross_entropy(hidden.flatten(0, 1).index_select(0, keep), base.get_output_embeddings(),
                                    targets.flatten().index_select(0, keep), use_liger=self.use_liger, softcap=self.softcap)


def linear_cross_entropy(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, *, use_liger: bool,
                         softcap: float | None = None, chunk: int = 4096) -> torch.Tensor:
    """Sum of cross-entropies of the output head's logits of ``hidden`` against ``targets`` (IGNORE =
    -100 skipped), without keeping the full logits. ``head`` is the model's output embedding: a plain
    Linear, or a LoRA layer when ``lm_head`` is adapted (then its adapter is in the logits, and
    trained). ``softcap``: the final-logit soft-capping of Gemma-2 and others (``cap * tanh(z / cap)``)."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    if not len(targets):  # a micro-batch without targets: zero, still connected to the graph
        return hidden.sum() * 0.0
    plain = type(head) is torch.nn.Linear and head.bias is None
    if use_liger and plain:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        capped = {"softcap": softcap} if softcap is not None else {}
        return LigerFusedLinearCrossEntropyLoss(reduction="sum", ignore_index=-100, **capped)(head.weight, hidden, targets)
    return chunked_linear_cross_entropy(hidden, head, targets, chunk, softcap=softcap)


def _chunk_loss(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, softcap: float | None) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")


def chunked_linear_cross_entropy(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, chunk: int = 4096,
                                 softcap: float | None = None) -> torch.Tensor:
    """Plain-PyTorch fallback: logits of one chunk at a time, recomputed in backward."""
    from torch.utils.checkpoint import checkpoint

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        part = targets[start : start + chunk]
        if bool((part != -100).any()):
            total = total + checkpoint(_chunk_loss, hidden[start : start + chunk], head, part, softcap, use_reentrant=False)
    return total


def fit_layers(per_token: int, per_layer: int, layers: int, available: float, *, max_seq_len: int, cap: int,
               floor: int = 4096) -> tuple[int, int]:
    """(micro_batch_tokens, layers kept without checkpointing) within ``available`` bytes, where a token
    costs ``per_token`` bytes with every layer checkpointed and ``per_layer`` more for each layer kept.
    Recompute costs more than a smaller micro-batch once it holds ``floor`` tokens, so: as many layers
    kept as fit at ``floor`` tokens (or one ``max_seq_len`` example, if longer), then the largest budget
    those layers leave room for."""
    smallest = round_up(max(floor, max_seq_len))
    kept = int(min(layers, max(0, (available / smallest - per_token) // per_layer)))
    budget = int(available // (per_token + kept * per_layer)) // BLOCK * BLOCK
    return max(round_up(max_seq_len), min(cap, budget)), kept


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


# --- micro-batch sizing from measured memory ----------------------------------------------------------
def decoder_layers(model) -> list:
    """The decoder layers, each of which can be checkpointed on its own."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def checkpointed_layers(model) -> int:
    return sum(bool(layer.gradient_checkpointing) for layer in decoder_layers(model))


def checkpoint_layers(model, count: int) -> None:
    """Gradient checkpointing on the last ``count`` decoder layers of a peft model, off on the others."""
    from entrypoints import models

    layers = decoder_layers(model)
    if count and not all(hasattr(layer, "_gradient_checkpointing_func") for layer in layers):
        models.enable_checkpointing(model.get_base_model())
    for index, layer in enumerate(layers):
        layer.gradient_checkpointing = index >= len(layers) - count


def probe_memory(model, forward: Callable, tokens: int, max_seq_len: int) -> int:
    """Peak bytes one forward+backward over ``tokens`` tokens (examples of ``max_seq_len``) adds, through
    the recipe's ``forward(model, batch) -> (loss sum, targets)``; RNG streams left untouched."""
    cpu_rng, cuda_rng = torch.random.get_rng_state(), torch.cuda.get_rng_state_all()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=generator)
    positions = torch.arange(tokens) % max_seq_len
    batch = {"input_ids": ids, "targets": torch.roll(ids, -1, 1), "position_ids": positions[None],
             "doc_ids": (torch.arange(tokens) // max_seq_len)[None]}
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    loss_sum, _ = forward(model, batch)
    loss_sum.backward()
    torch.cuda.synchronize()
    used = torch.cuda.max_memory_allocated() - before
    del loss_sum
    model.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    torch.random.set_rng_state(cpu_rng)
    torch.cuda.set_rng_state_all(cuda_rng)
    return used


def memory_target(model, config: TrainConfig, log: Callable[[str], None]) -> float | None:
    """Peak bytes within which the budget and the checkpointed layers are fitted: ``max_memory_gib``,
    or QLoRA's default, ``launcher.memory.qlora_memory_target`` of the loaded model's shape. None: LoRA
    without a limit, or a shape the memory model does not understand (every layer stays checkpointed)."""
    if config.max_memory_gib is not None:
        return config.max_memory_gib * 2**30
    if config.method != "qlora":
        return None
    try:
        shape = memory.ModelShape.from_config(model.get_base_model().config.to_dict(), name=config.base_model, source="config")
    except SpecError as exc:
        log(f"QLoRA: no memory target from the model's shape ({exc}); every layer checkpointed")
        return None
    target = memory.qlora_memory_target(shape, config)
    if target is not None:
        log(f"QLoRA memory target {target / 2**30:.1f} GiB: what {config.micro_batch_size} padded rows of "
            f"{config.max_seq_len} tokens take on the standard path (set max_memory_gib to change it)")
    return target


@dataclass(frozen=True)
class Sizing:
    """What ``size_micro_batches`` decided (the model's layers are left checkpointed accordingly)."""

    micro_batch_tokens: int
    bytes_per_token: int  # measured, with the layers checkpointed as decided
    checkpointed_layers: int


def size_micro_batches(model, probe: Callable[[int], int], config: TrainConfig, *, log: Callable[[str], None],
                       total_memory: int | None = None, allocated: Callable[[], int] | None = None) -> Sizing:
    """The fast path's micro-batch budget on a GPU. Within a ``memory_target``, as many decoder layers
    kept out of checkpointing as fit (``fit_layers``); otherwise the largest budget the GPU holds, with
    every layer checkpointed only when checkpointing is "auto" and one ``max_seq_len`` example does not
    fit without it. ``probe(tokens)``: the peak bytes a step over ``tokens`` tokens adds
    (``probe_memory``); ``total_memory`` and ``allocated()`` are the GPU's unless given."""
    total = torch.cuda.get_device_properties(0).total_memory if total_memory is None else total_memory
    allocated = allocated or torch.cuda.memory_allocated
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # No micro-batch need hold more than one optimizer step.
    cap = min(BUDGET_CAP[config.method], round_up(config.micro_batch_size * config.gradient_accumulation_steps * config.max_seq_len))
    target = memory_target(model, config, log)
    if target is not None:
        return _fit_within(model, probe, config, min(0.95 * total, target), trainable=trainable, cap=cap,
                           allocated=allocated(), log=log)
    reserve = 2 * 2**30 + 0.05 * total + 8 * trainable  # CUDA context, fragmentation, AdamW states
    probe_tokens = round_up(max(2048, 2 * config.max_seq_len))
    for attempt in range(2):
        available = 0.95 * total - reserve - allocated()
        budget, per_token = choose_budget(probe, probe_tokens=probe_tokens, max_seq_len=config.max_seq_len,
                                          available_bytes=available, cap=cap)
        fits = budget * per_token <= available
        if fits or attempt or checkpointed_layers(model) or config.gradient_checkpointing == "off":
            break
        log("one max_seq_len example does not fit without gradient checkpointing: turning it on")
        checkpoint_layers(model, len(decoder_layers(model)))
    log(f"micro-batch budget: {budget} tokens ({per_token / 2**10:.0f} KiB per token measured)")
    return Sizing(budget, per_token, checkpointed_layers(model))


def _fit_within(model, probe: Callable[[int], int], config: TrainConfig, target: float, *, trainable: int, cap: int,
                allocated: int, log: Callable[[str], None]) -> Sizing:
    """Micro-batch tokens and per-layer checkpointing within ``target`` bytes of peak, measured by three
    probe steps: with every layer checkpointed, then with the first one and two layers kept."""
    available = 0.95 * target - allocated - 8 * trainable  # 5% margin; AdamW states
    layers = len(decoder_layers(model))
    probe_tokens = round_up(max(2048, config.max_seq_len))
    peaks = []  # with 0, 1 and 2 layers kept (the first layers)
    for kept in range(min(3, layers + 1)):
        checkpoint_layers(model, layers - kept)
        peaks.append(probe(probe_tokens))
    # A kept layer's cost is measured on the second layer: the first one's input needs no gradient,
    # so it keeps less than the others.
    per_layer = max(1, math.ceil((peaks[-1] - peaks[-2]) / probe_tokens))
    per_token = math.ceil(peaks[0] / probe_tokens)
    budget, kept = fit_layers(per_token, per_layer, layers, available, max_seq_len=config.max_seq_len, cap=cap)
    checkpoint_layers(model, layers - kept)
    log(f"memory target {target / 2**30:.1f} GiB: {budget} tokens a micro-batch, {layers - kept} of {layers} layers "
        f"checkpointed ({per_token / 2**10:.0f} KiB per token checkpointed, {per_layer / 2**10:.0f} KiB more per layer kept, "
        f"{(peaks[1] - peaks[0]) / probe_tokens / 2**10:.0f} KiB for the first)")
    return Sizing(budget, per_token + kept * per_layer, layers - kept)
