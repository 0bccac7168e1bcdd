"""The GPU memory model and the runtime policy that the training entrypoint and ``launcher plan`` share.

Pure arithmetic over a model's shape and a ``TrainConfig``: no torch, no file reading. Where the shape
comes from is the caller's business: ``launcher.plan.find_model`` reads it from the model catalog, a
local ``config.json``, a ``.gguf`` header or the Hugging Face cache (lookups and file formats, so they
stay with plan's other catalogues); the training entrypoint reads it off the loaded model's config
(``ModelShape.from_config``). Both then ask this module the same questions, so a plan and a run cannot
disagree about them:

* ``runtime_policy(config, device)``: whether the run takes the GPU fast path, whether its decoder
  layers start checkpointed, and which step must fit in memory. The entrypoint calls it with its
  device; plan calls it with ``"cuda"`` (it plans GPUs).
* ``estimate_memory(shape, config)`` and ``choose_checkpointing``: what a step takes, term by term,
  and whether gradient checkpointing is needed to fit a GPU.
* ``qlora_memory_target(shape, config)``: the bytes QLoRA's fast path spends by default.
* ``parallelism(memory, shape, have, gpus, mode)``: on several GPUs, DDP (every GPU holds the whole
  model) when the job fits one GPU, else FSDP2 (``fully_shard`` per decoder layer), and what a GPU
  then holds (``fsdp_total``).

Several GPUs
------------
DDP keeps a whole replica per GPU: memory per GPU is the one-GPU figure. FSDP2 shards the frozen
weights and the LoRA state across the ``gpus`` ranks (ZeRO-3, Rajbhandari et al. 2020) and all-gathers
one decoder layer at a time, with the next layer prefetched: per GPU, weights / gpus + two layers'
unsharded weights + LoRA state / gpus + the same activations, logits and margin as on one GPU (each
rank runs its own micro-batches of the same size).

One known difference is left as it is: on the standard path (``fast_path: off``) on a GPU, plan's
``choose_checkpointing`` turns "auto" checkpointing on where the job does not fit without it, while the
entrypoint runs "auto" as off there (it measures memory only on the fast path).

Memory model (bytes on ONE GPU; data-parallel training replicates the job on every GPU)
-----------------------------------------------------------------------------------------
With h = hidden size, q/kv = query/key-value widths (heads x head_dim), i = intermediate size,
V = vocabulary, L = layers, r = LoRA rank, T = tokens in a micro-batch (micro_batch_size x
max_seq_len: packed rows are full, padded rows are at most that long) and a = 2 bytes (bf16):

* Frozen base weights. LoRA: every parameter in bf16, 2 bytes. QLoRA: the linear layers of the
  transformer blocks in NF4 (Dettmers et al. 2023, "QLoRA", sec. 3; bitsandbytes ``Linear4bit``):
  4 bits per weight, one absmax per block of 64 weights, itself quantised to 8 bits with one fp32
  constant per 256 blocks (double quantisation): 0.5 + 1/64 + 4/(64*256) bytes per weight.
  Embeddings, lm_head, norms and biases stay bf16. (peft's ``prepare_model_for_kbit_training``
  upcasts those to fp32, which also makes the activations fp32; the plan assumes they stay bf16.)
* LoRA adapters: r x (in + out) parameters per adapted matrix (Hu et al. 2021), over the target
  modules (every linear layer of the blocks for ``all-linear``, as peft does; not lm_head), plus
  one magnitude per output feature with DoRA. peft keeps them in fp32: weight 4 + gradient 4 +
  AdamW's two moments 8 = 16 bytes per parameter (the mixed-precision accounting of Rajbhandari et
  al. 2020, "ZeRO", sec. 3.1, without a bf16 copy).
* Activations (what autograd keeps for the backward pass), per token and layer. The derivation of
  Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
  sec. 4.1: 34h + 5as/h bytes for GPT), redone for Llama-style blocks under LoRA; memory-efficient
  SDPA/FlashAttention keeps no s^2 score matrix, so there is no sequence-squared term:
    - each RMSNorm keeps its fp32 input (transformers computes norms in fp32): 4h per norm;
    - attention keeps q, k, v and its output: a x (2q + 2kv);
    - the SwiGLU MLP keeps gate, SiLU(gate) and up: 3 x a x i;
    - frozen base linear layers keep nothing (their weights need no gradient);
    - each LoRA layer keeps its input cast to fp32 for lora_A (4 bytes x in_features) and lora_A's
      r-wide fp32 output (4r); lora_dropout > 0 adds a 1-byte mask per input element.
  Without gradient checkpointing all L layers are kept. With it (Chen et al. 2016) only each
  layer's bf16 input (a x h) is kept, and one layer is recomputed at a time during the backward.
* Logits and loss: transformers' ``ForCausalLMLoss`` upcasts the bf16 logits to fp32 before the
  cross-entropy, so at the loss's backward the bf16 logits (2), the fp32 copy (4), the saved
  log-softmax (4) and its gradient (4) coexist: T x V x 14 bytes, plus the final norm's fp32 input
  (4h per token). With gradient checkpointing this is the peak; the recomputed layer (its
  activations and their gradients, about twice one layer) is counted when it is larger.
* CUDA context and cuBLAS workspaces: 1 GiB; the caching allocator's fragmentation: 12.5% of the
  activation and logits terms (peak reserved over peak allocated on the H200 runs below).

Checked against plain transformers 5.17 + peft 0.21 + torch 2.11 on one H200 (random weights,
2,048-token rows, SDPA; peak ``torch.cuda.max_memory_allocated``): the allocated figure is
reproduced within 1% for Llama-3-8B (checkpointing with micro-batch 2 and 8, none with micro-batch
1 and 2, lora_dropout 0 and 0.05) and Qwen2.5-1.5B; tests/test_memory.py holds those figures.

Runtime policy
--------------
The fast path (``fast_path: auto`` on a CUDA GPU, or ``on``) packs each step's examples into
micro-batches of at most ``micro_batch_tokens`` tokens sized from measured memory
(``entrypoints.fast.size_micro_batches``), so what must fit is one ``max_seq_len`` example
(``Policy.must_fit``: ``micro_batch_size`` 1); the standard path keeps ``micro_batch_size`` rows.
Gradient checkpointing "on" and "off" are kept. "auto" starts off, except for QLoRA on the fast path,
which starts with every layer checkpointed and then keeps as many layers out of checkpointing as fit
its memory target; LoRA on the fast path turns it on only when one example does not fit without it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from launcher.errors import SpecError, did_you_mean

if TYPE_CHECKING:
    from launcher.spec import TrainConfig

GIB = 1 << 30

# --- constants of the memory model (see the module docstring) ---------------------------------------
LORA_BYTES_PER_PARAM = 16  # fp32 weight + fp32 gradient + AdamW's two fp32 moments
NF4_BLOCK = 64  # weights per absmax block
NF4_SECOND_BLOCK = 256  # first-level absmax values per fp32 second-level constant
LOGIT_BYTES = {2: 14, 4: 12}  # per logit element, by compute dtype size: bf16 + fp32 copy + log-softmax + gradient
CUDA_CONTEXT_BYTES = 1 * GIB
ALLOCATOR_MARGIN = 0.125

KNOWN_FAMILIES = {"phi3": "phi3"}  # config.json model_type -> family; everything else is 'llama'-style


# --- model shapes -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelShape:
    """The architecture numbers the memory and FLOP model needs."""

    name: str
    family: str  # 'llama' (q/k/v/o, gate/up/down) or 'phi3' (qkv_proj, gate_up_proj)
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    max_positions: int
    qkv_bias: bool = False
    norms_per_layer: int = 2
    source: str = "catalog"

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_modules(self) -> dict[str, tuple[int, int]]:
        """The linear layers of one block: name -> (in_features, out_features)."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        if self.family == "phi3":
            return {"qkv_proj": (h, q + 2 * kv), "o_proj": (q, h), "gate_up_proj": (h, 2 * i), "down_proj": (i, h)}
        return {
            "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }  # fmt: skip

    @property
    def linear_params(self) -> int:
        """Weights of every linear layer in the blocks (what QLoRA quantises)."""
        return self.layers * sum(a * b for a, b in self.linear_modules().values())

    @property
    def params(self) -> int:
        per_layer_other = self.norms_per_layer * self.hidden + (self.q_dim + 2 * self.kv_dim if self.qkv_bias else 0)
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.linear_params + self.layers * per_layer_other + embeddings + self.hidden  # + final norm

    @property
    def matmul_params(self) -> int:
        """Parameters used in a matmul per token: the block linears and lm_head (tied or not)."""
        return self.linear_params + self.vocab * self.hidden

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "params": self.params}

    @classmethod
    def from_config(cls, config: dict[str, Any], name: str, source: str) -> ModelShape:
        """Read a Hugging Face ``config.json`` (decoder-only transformers)."""
        config = config.get("text_config") or config
        model_type = str(config.get("model_type", ""))
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size") if k not in config]
        if missing:
            raise SpecError(
                f"{source}: no '{missing[0]}' in config.json (model_type '{model_type}'). launcher plan understands "
                "decoder-only configs (Llama, Mistral, Qwen2, Gemma-2, Phi-3). To fix: point base_model at such a model's folder"
            )
        heads = int(config["num_attention_heads"])
        return cls(
            name=name,
            family=KNOWN_FAMILIES.get(model_type, "llama"),
            hidden=int(config["hidden_size"]),
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
            intermediate=int(config["intermediate_size"]),
            vocab=int(config["vocab_size"]),
            tied=bool(config.get("tie_word_embeddings", False)),
            max_positions=int(config.get("max_position_embeddings") or 0),
            qkv_bias=bool(config.get("attention_bias", model_type == "qwen2")),
            norms_per_layer=4 if model_type.startswith("gemma2") or model_type.startswith("gemma3") else 2,
            source=source,
        )


def lora_modules(shape: ModelShape, target_modules: list[str] | str) -> dict[str, tuple[int, int]]:
    """The adapted linear layers of one block, checked against the model's own layer names."""
    modules = shape.linear_modules()
    if target_modules == "all-linear":
        return modules
    unknown = [m for m in target_modules if m not in modules]
    if unknown:
        raise SpecError(
            f"training.target_modules: '{unknown[0]}' is not a linear layer of {shape.name}.{did_you_mean(unknown[0], modules)} "
            f"Its linear layers: {', '.join(modules)}. To fix: list some of those, or use 'all-linear'"
        )
    return {m: modules[m] for m in target_modules}


# --- memory -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on one GPU, term by term (see the module docstring for each formula)."""

    weights: int
    weights_detail: str
    lora_params: int
    lora_state: int
    activations_full: int  # without gradient checkpointing
    activations_checkpointed: int  # with it: layer inputs + one recomputed layer (when larger than the logits)
    logits: int
    micro_batch_tokens: int

    def activations(self, checkpointing: bool) -> int:
        return self.activations_checkpointed if checkpointing else self.activations_full

    def margin(self, checkpointing: bool) -> int:
        return CUDA_CONTEXT_BYTES + int(ALLOCATOR_MARGIN * (self.activations(checkpointing) + self.logits))

    def tensors(self, checkpointing: bool) -> int:
        """What the step's tensors take at their peak (``torch.cuda.max_memory_allocated``): no margin."""
        return self.weights + self.lora_state + self.activations(checkpointing) + self.logits

    def total(self, checkpointing: bool) -> int:
        return self.tensors(checkpointing) + self.margin(checkpointing)

    def rows(self) -> list[tuple[str, int, str]]:
        """(term, bytes, note) for a table; the totals come last."""
        return [
            ("base weights", self.weights, self.weights_detail),
            ("LoRA adapters", self.lora_state, f"{self.lora_params:,} params x 16 B (fp32 weight, grad, AdamW m and v)"),
            ("activations, checkpointing on", self.activations_checkpointed, f"{self.micro_batch_tokens:,} tokens/micro-batch: layer inputs + one layer"),
            ("activations, checkpointing off", self.activations_full, "every layer kept; no seq^2 term (memory-efficient attention)"),
            ("logits and loss", self.logits, "tokens x vocab x 14 B (bf16 logits, fp32 copy, log-softmax, grad)"),
            ("CUDA context + allocator", self.margin(True), "1 GiB + 12.5% of activations and logits (checkpointing on)"),
            ("total, checkpointing on", self.total(True), ""),
            ("total, checkpointing off", self.total(False), ""),
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "margin_checkpointing": self.margin(True),
            "margin_no_checkpointing": self.margin(False),
            "total_checkpointing": self.total(True),
            "total_no_checkpointing": self.total(False),
        }


def nf4_bytes(numel: int) -> int:
    """Bytes of one NF4 tensor with double-quantised absmax (bitsandbytes, blocksize 64)."""
    blocks = math.ceil(numel / NF4_BLOCK)
    return math.ceil(numel / 2) + blocks + 4 * math.ceil(blocks / NF4_SECOND_BLOCK)


def lora_param_count(shape: ModelShape, config: TrainConfig) -> int:
    modules = lora_modules(shape, config.target_modules)
    per_layer = sum(config.lora_r * (fan_in + fan_out) + (fan_out if config.use_dora else 0) for fan_in, fan_out in modules.values())
    return shape.layers * per_layer


def estimate_memory(shape: ModelShape, config: TrainConfig) -> MemoryEstimate:
    """GPU memory for one training step of ``config`` (a TrainConfig: method and hyperparameters)."""
    a = 4 if config.precision == "fp32" else 2
    h, L = shape.hidden, shape.layers
    non_linear = shape.params - shape.linear_params
    if config.method == "qlora":
        quantised = shape.layers * sum(nf4_bytes(fi * fo) for fi, fo in shape.linear_modules().values())
        weights = quantised + non_linear * a
        detail = f"{shape.linear_params:,} params in NF4 + {non_linear:,} (embeddings, norms) in {'fp32' if a == 4 else 'bf16'}"
    else:
        weights = shape.params * a
        detail = f"{shape.params:,} params x {a} B ({'fp32' if a == 4 else 'bf16'})"
        if config.fp8 == "on":  # the fast path keeps two float8 copies of each frozen linear weight
            weights += 2 * shape.linear_params
            detail += f" + {shape.linear_params:,} x 2 B (float8 copies for fp8: on)"
    lora_params = lora_param_count(shape, config)
    modules = lora_modules(shape, config.target_modules)
    fan_in = sum(fi for fi, _ in modules.values())
    tokens = config.micro_batch_size * config.max_seq_len
    per_token_layer = (
        4 * h * shape.norms_per_layer  # RMSNorm inputs, fp32
        + a * (2 * shape.q_dim + 2 * shape.kv_dim)  # q, k, v, attention output
        + 3 * a * shape.intermediate  # gate, SiLU(gate), up
        + 4 * fan_in  # LoRA inputs cast to fp32
        + 4 * config.lora_r * len(modules)  # lora_A outputs, fp32
        + (fan_in if config.lora_dropout > 0 else 0)  # dropout masks
    )
    layer = tokens * per_token_layer
    logits = tokens * (shape.vocab * LOGIT_BYTES[a] + 4 * h)
    checkpoints = tokens * L * a * h
    return MemoryEstimate(
        weights=weights,
        weights_detail=detail,
        lora_params=lora_params,
        lora_state=lora_params * LORA_BYTES_PER_PARAM,
        activations_full=L * layer,
        # The logits peak first; a recomputed layer (activations and their gradients) only counts when larger.
        activations_checkpointed=checkpoints + max(0, 2 * layer - logits),
        logits=logits,
        micro_batch_tokens=tokens,
    )


def choose_checkpointing(memory: MemoryEstimate, have: int, mode: str = "auto") -> tuple[bool, bool]:
    """(gradient checkpointing on?, fits?) on a GPU with ``have`` usable bytes: 'on'/'off' are kept;
    'auto' turns checkpointing on only when the job does not fit without it (it costs about a quarter
    of the speed)."""
    if mode == "auto":
        checkpointing = memory.total(False) > have
    else:
        checkpointing = mode == "on"
    return checkpointing, memory.total(checkpointing) <= have


def qlora_memory_target(shape: ModelShape, config: TrainConfig) -> int | None:
    """Bytes QLoRA's fast path may take by default (None: not QLoRA, or a limit is set): what the
    standard path's tensors would take for the config as written (``micro_batch_size`` padded rows of
    ``max_seq_len`` tokens, every layer checkpointed, full logits). QLoRA is chosen for memory, so the
    fast path spends no more than that, on checkpointing fewer layers."""
    if config.method != "qlora" or config.gradient_checkpointing != "auto" or config.max_memory_gib is not None:
        return None
    return estimate_memory(shape, config.model_copy(update={"gradient_checkpointing": "on"})).tensors(True)


# --- runtime policy ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """How the training entrypoint runs a config on a device (see the module docstring)."""

    fast: bool  # the fast path: packed token-budget micro-batches, per-example attention, fused kernels
    gradient_checkpointing: bool  # every decoder layer checkpointed when the model is built
    must_fit: TrainConfig  # the step that must fit in memory: one max_seq_len example on the fast path


def runtime_policy(config: TrainConfig, device: str) -> Policy:
    """The fast-path and checkpointing decisions for ``config`` on ``device`` ('cuda' or 'cpu')."""
    fast = config.fast_path == "on" or (config.fast_path == "auto" and device == "cuda")
    mode = config.gradient_checkpointing
    return Policy(
        fast=fast,
        gradient_checkpointing=mode == "on" or (mode == "auto" and fast and config.method == "qlora"),
        must_fit=config.model_copy(update={"micro_batch_size": 1}) if fast else config,
    )


# --- several GPUs -------------------------------------------------------------------------------------
def check_world(config: TrainConfig, world_size: int) -> None:
    """Refuse a world size that cannot split every optimizer step evenly (each rank trains an equal
    share of the step's micro_batch_size x gradient_accumulation_steps rows)."""
    rows = config.micro_batch_size * config.gradient_accumulation_steps
    if rows % world_size:
        steps = next(g for g in range(config.gradient_accumulation_steps, 10**6) if config.micro_batch_size * g % world_size == 0)
        raise SpecError(f"an optimizer step of micro_batch_size x gradient_accumulation_steps = {rows} rows cannot be split "
                        f"evenly over {world_size} processes. To fix: gradient_accumulation_steps: {steps} (or a world size "
                        f"that divides {rows})")


def layer_weight_bytes(memory: MemoryEstimate, shape: ModelShape) -> int:
    """One decoder layer's share of the frozen weights (what FSDP all-gathers at a time)."""
    embeddings = shape.vocab * shape.hidden * (1 if shape.tied else 2)
    per_weight = memory.weights / max(1, shape.params)
    return int((shape.params - embeddings) / shape.layers * per_weight)


def fsdp_total(memory: MemoryEstimate, shape: ModelShape, gpus: int, checkpointing: bool) -> int:
    """Bytes per GPU with FSDP2 over ``gpus`` GPUs (see the module docstring)."""
    sharded = (memory.weights + memory.lora_state) // gpus + 2 * layer_weight_bytes(memory, shape)
    return sharded + memory.activations(checkpointing) + memory.logits + memory.margin(checkpointing)


@dataclass(frozen=True)
class Parallelism:
    """How a job runs on ``gpus`` GPUs: 'single' (one GPU), 'ddp' or 'fsdp'; bytes per GPU; fits?"""

    strategy: str
    checkpointing: bool
    bytes_per_gpu: int
    fits: bool


def parallelism(memory: MemoryEstimate, shape: ModelShape, have: int, gpus: int, mode: str = "auto",
                strategy: str = "auto") -> Parallelism:
    """DDP when the job fits one GPU (no communication beyond the adapter's gradients), else FSDP2
    when sharding makes it fit; ``strategy`` 'ddp' or 'fsdp' is kept as asked. Checkpointing as
    ``choose_checkpointing`` decides it, for the strategy's bytes."""
    checkpointing, fits = choose_checkpointing(memory, have, mode)
    if gpus == 1:
        return Parallelism("single", checkpointing, memory.total(checkpointing), fits)
    if strategy == "ddp" or (strategy == "auto" and fits):
        return Parallelism("ddp", checkpointing, memory.total(checkpointing), fits)
    if mode == "auto":
        checkpointing = fsdp_total(memory, shape, gpus, False) > have
    else:
        checkpointing = mode == "on"
    need = fsdp_total(memory, shape, gpus, checkpointing)
    return Parallelism("fsdp", checkpointing, need, need <= have)
