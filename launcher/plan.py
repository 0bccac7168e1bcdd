"""Memory, time and cost of a fine-tuning job, before anything is billed (``launcher plan``).

Everything here is arithmetic over data files in ``launcher/catalog/``: ``models.json`` (architecture
numbers), ``gpus.json`` (memory, bf16 peak), ``prices.json`` (the one dated price table) and
``throughput.json`` (measured tokens/s). Calibrating or re-pricing is a data edit. No torch here; the
tokenizer is imported only when the dataset's tokens are counted.

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
1 and 2, lora_dropout 0 and 0.05) and Qwen2.5-1.5B; tests/test_plan.py holds those figures.

Time and cost
-------------
Throughput is per GPU kind and method from ``throughput.json`` (measured, or scaled from a measured
kind by bf16 peak FLOPs) for a reference model (Llama-3-8B). Time per token on another model is
the reference's time x ((1 - f) x F/F_ref + f x L/L_ref), where F = 4 x (linear + lm_head
parameters) + 6 x L x q x max_seq_len is the training FLOPs per token (LoRA computes no weight
gradients for the frozen base, so 4N rather than the 6N of full training; attention counted
causally) and f = 0.26 is the share of time that goes with the number of layers instead
(elementwise kernels and launches): a size sweep on one H200 from 0.5B to 14B fits within 8% this
way, where FLOPs alone is 4x optimistic at 0.5B. Gradient checkpointing costs its measured factor
(0.737). Data parallelism keeps ``data_parallel_efficiency_per_doubling`` (0.9) of linear scaling per
doubling of GPUs. Hours = training tokens / throughput + a fixed overhead (model
download, evaluation); cost = hours x $/h on demand and on spot, from ``prices.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher import catalog
from launcher.errors import LauncherError, MissingExtraError, NotFoundError, SpecError, did_you_mean, reason

if TYPE_CHECKING:
    from launcher.data import Example
    from launcher.spec import JobSpec, TrainConfig

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


def _catalog_models() -> dict[str, dict[str, Any]]:
    return catalog.load("models")["models"]


def find_model(base_model: str) -> ModelShape | None:
    """The shape of ``base_model`` (a catalog id, a local folder with config.json, a local .gguf file, or
    a Hub id whose config.json is in the local Hugging Face cache), or None when none of those knows it.
    A local path that is missing or holds no config.json is an error."""
    path = Path(base_model).expanduser()
    if base_model.lower().endswith(".gguf") and "://" not in base_model and not path.is_dir():
        if not path.is_file():
            raise NotFoundError(f"base model file '{base_model}' does not exist. To fix: check the path (a .gguf base_model is a local file)")
        return ModelShape.from_config(_gguf_config(path), name=str(path), source=f"{path} (GGUF header)")
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise NotFoundError(f"base model folder '{path}' has no config.json. To fix: point base_model at a saved Hugging Face model")
        try:
            values = json.loads(config.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SpecError(f"{config}: not valid JSON ({exc}). To fix: re-save the model's config.json") from None
        return ModelShape.from_config(values, name=str(path), source=str(config))
    if base_model.startswith((".", "/", "~")):
        raise NotFoundError(f"base model folder '{base_model}' does not exist. To fix: check the path")
    wanted = base_model.strip().lower()
    for key, entry in _catalog_models().items():
        names = [key, *entry.get("ids", [])]
        if any(wanted in (n.lower(), n.lower().split("/")[-1]) for n in names):
            fields = {k: v for k, v in entry.items() if k not in ("ids", "note")}
            fields.setdefault("head_dim", fields["hidden"] // fields["heads"])
            return ModelShape(name=key, **fields)
    cached = _hub_cache_config(base_model)
    if cached is not None:
        return ModelShape.from_config(json.loads(cached.read_text(encoding="utf-8")), name=base_model, source=str(cached))
    return None


def _gguf_config(path: Path) -> dict[str, Any]:
    """The config.json values of a GGUF file's model, read from its header (no weights are read; the
    names are those transformers maps them to when it loads the file)."""
    try:
        import gguf
    except ImportError:
        raise MissingExtraError("gguf", "train", f"Reading the GGUF base model {path}") from None
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as exc:
        raise SpecError(f"base model '{path}' is not a readable GGUF file ({reason(exc)}). "
                        "To fix: point base_model at a .gguf file written by llama.cpp, or at a model folder") from None

    def value(key: str, default: Any = None) -> Any:
        field = reader.fields.get(key)
        return field.contents() if field is not None else default

    arch = str(value("general.architecture", ""))
    config: dict[str, Any] = {"model_type": arch}
    for gguf_key, hf_key in (("embedding_length", "hidden_size"), ("block_count", "num_hidden_layers"),
                             ("attention.head_count", "num_attention_heads"), ("attention.head_count_kv", "num_key_value_heads"),
                             ("attention.key_length", "head_dim"), ("feed_forward_length", "intermediate_size"),
                             ("vocab_size", "vocab_size"), ("context_length", "max_position_embeddings")):
        found = value(f"{arch}.{gguf_key}")
        if found is not None:
            config[hf_key] = found
    if "vocab_size" not in config and "tokenizer.ggml.tokens" in reader.fields:
        config["vocab_size"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    # llama.cpp stores no output matrix when the head shares the embedding's weights.
    config["tie_word_embeddings"] = not any(tensor.name == "output.weight" for tensor in reader.tensors)
    return config


def _hub_cache_config(repo_id: str) -> Path | None:
    """config.json of a Hub model already in the local Hugging Face cache (plan never downloads)."""
    if repo_id.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(found) if isinstance(found, str) else None


def resolve_model(base_model: str) -> ModelShape:
    """Like ``find_model``, but an unknown id is an error that says what is known and how to fix it."""
    shape = find_model(base_model)
    if shape is None:
        known = [n for key, entry in _catalog_models().items() for n in (key, *entry.get("ids", []))]
        hint = did_you_mean(base_model, known) or did_you_mean(base_model.split("/")[-1], [n.split("/")[-1] for n in known])
        raise SpecError(
            f"base_model '{base_model}' is not in launcher's model catalog nor the local Hugging Face cache, so its size is unknown.{hint} "
            f"Known: {', '.join(_catalog_models())} (and their -Instruct ids). "
            "To fix: set base_model to a local folder holding the model's config.json "
            "(e.g. huggingface-cli download ID config.json --local-dir DIR), or use a known id"
        )
    return shape


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


# --- GPUs, prices, throughput --------------------------------------------------------------------------
def gpu_info(kind: str) -> dict[str, Any]:
    return catalog.load("gpus")["kinds"][kind]


def usable_bytes(kind: str) -> int:
    info = gpu_info(kind)
    return int(info.get("usable_gib", info["memory_gib"]) * GIB)


def instance_types() -> list[dict[str, Any]]:
    """Every priced instance/machine type: cloud, type, gpu, gpus, on_demand, spot, spot_allowed."""
    prices = catalog.load("prices")
    return [
        {"cloud": cloud, "instance_type": name, **entry}
        for cloud, section in prices["clouds"].items()
        for name, entry in section["types"].items()
    ]


def training_flops_per_token(shape: ModelShape, seq_len: int) -> float:
    """4 x matmul params (forward + input gradients; no weight gradients for the frozen base) plus
    causal attention (QK^T and AV: 2 x L x q x seq forward, twice that backward)."""
    return 4 * shape.matmul_params + 6 * shape.layers * shape.q_dim * seq_len


@dataclass(frozen=True)
class Throughput:
    tokens_per_s: float  # effective tokens/s on ONE GPU for the job's model
    basis: str  # 'measured on H200, 2026-11' or 'scaled from H200 by bf16 peak (...)'



def throughput(kind: str, method: str, shape: ModelShape, seq_len: int, checkpointing: bool) -> Throughput | None:
    """Tokens/s on one ``kind`` GPU for ``shape``, from throughput.json (None when the table has no
    entry for the method at all)."""
    table = catalog.load("throughput")
    entries = [e for e in table["entries"] if e["method"] == method]
    if not entries:
        return None
    own = [e for e in entries if e["gpu"] == kind]
    if own:
        entry, scale = own[0], 1.0
        basis = f"{entry['source']} on {kind}" + (f" ({entry['basis']})" if entry.get("basis") else f", {entry.get('date', '')}")
    else:
        peak = gpu_info(kind)["bf16_tflops"]
        # Prefer a measured entry; among those, the kind closest in bf16 peak.
        entry = min(entries, key=lambda e: (e["source"] != "measured", abs(gpu_info(e["gpu"])["bf16_tflops"] - peak)))
        scale = peak / gpu_info(entry["gpu"])["bf16_tflops"]
        basis = f"scaled from {entry['gpu']} by bf16 peak ({peak}/{gpu_info(entry['gpu'])['bf16_tflops']} TFLOP/s)"
    reference = find_model(table["reference"]["model"])
    assert reference is not None, "throughput.json's reference model must be in models.json"
    layer_share = table["model_scaling"]["layer_fraction"]
    relative_time = (1 - layer_share) * training_flops_per_token(shape, seq_len) / training_flops_per_token(
        reference, table["reference"]["seq_len"]
    ) + layer_share * shape.layers / reference.layers
    scale /= relative_time
    factor = table["checkpointing_speed_factor"]
    if checkpointing != entry.get("gradient_checkpointing", True):
        scale *= factor if checkpointing else 1 / factor
    return Throughput(entry["tokens_per_s"] * scale, basis)


def data_parallel_speedup(gpus: int) -> float:
    efficiency = catalog.load("throughput")["data_parallel_efficiency_per_doubling"]
    return gpus * efficiency ** math.log2(gpus) if gpus > 1 else 1.0


# --- dataset tokens ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetTokens:
    """Training tokens in one epoch (after truncation to max_seq_len and the eval hold-out)."""

    tokens: int | None
    examples: int | None
    method: str  # 'counted' (the model's tokenizer), 'estimated' (characters / 4), 'given' (--tokens) or 'unknown'
    note: str = ""


def count_dataset_tokens(spec: JobSpec) -> DatasetTokens:
    """Count the training set's tokens with the model's tokenizer and chat template when it is here,
    else estimate them as characters / 4 (+4 per message). Remote data (s3://, gs://) is not read."""
    from launcher.data import load_examples

    uri = spec.data.train
    if "://" in uri:
        return DatasetTokens(None, None, "unknown", f"{uri} is remote and is not read here, so time and cost are unknown. To fix: pass --tokens N (tokens in one epoch)")
    examples = load_examples(uri)
    lengths, why = _tokenize(spec.base_model, examples)
    method = "counted" if why is None else "estimated"
    if lengths is None:
        lengths = [sum(len(content) for _, content in e.messages) // 4 + 4 * len(e.messages) for e in examples]
    cap = spec.training.max_seq_len
    total = sum(min(n, cap) for n in lengths)
    note = f"{len(examples):,} examples, " + (f"characters / 4 because {why}" if why else f"{spec.base_model} tokenizer and chat template")
    if spec.data.eval is None:
        held_out = spec.training.eval_fraction
        total = round(total * (1 - held_out))
        note += f", less the {held_out:.0%} held out for evaluation"
    return DatasetTokens(total, len(examples), method, note)


def _tokenize(base_model: str, examples: list[Example]) -> tuple[list[int] | None, str | None]:
    """Token counts per example with the chat template applied, or (None, why not)."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None, "transformers is not installed (pip install \"launcher[train]\" to count exactly)"
    path = Path(base_model).expanduser()
    try:
        if base_model == "tiny-llama":
            from entrypoints import tiny_llama

            tokenizer = AutoTokenizer.from_pretrained(tiny_llama.materialize())
        elif base_model.lower().endswith(".gguf") and not path.is_dir():  # read from the file; not converted for a plan
            from entrypoints import models

            tokenizer = models.load_tokenizer(base_model, convert=False)
        elif path.is_dir():
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        else:  # a Hub id: only a tokenizer already in the local Hugging Face cache; plan never downloads
            tokenizer = AutoTokenizer.from_pretrained(base_model, local_files_only=True)
    except (OSError, ValueError, LauncherError) as exc:
        if base_model == "tiny-llama" or path.exists() or base_model.lower().endswith(".gguf"):
            return None, f"the tokenizer of {base_model} cannot be loaded ({reason(exc)})"
        return None, (f"{base_model}'s tokenizer is not in the local Hugging Face cache, and plan never downloads "
                      f"(huggingface-cli download {base_model} counts exactly, as does --tokens N)")
    texts = []
    for example in examples:
        messages = [{"role": role, "content": content} for role, content in example.messages]
        try:
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
        except (ValueError, TypeError):  # no chat template (a base model): plain text
            texts.append("\n".join(content for _, content in example.messages))
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]], None


# --- the plan ---------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    """One instance/machine type on one cloud, with the job's fit, time and cost on it."""

    cloud: str
    instance_type: str
    gpu: str
    gpus: int  # per node
    nodes: int
    fits: bool
    reason: str
    gradient_checkpointing: bool
    memory_needed: int  # bytes per GPU
    gpu_memory: int  # usable bytes per GPU
    on_demand_per_hour: float  # per node
    spot_per_hour: float | None
    spot_allowed: bool
    requested: bool = False
    tokens_per_s: float | None = None  # all GPUs together
    throughput_source: str = ""
    training_tokens: int | None = None
    hours: float | None = None
    on_demand_cost: float | None = None
    spot_cost: float | None = None
    note: str = ""


@dataclass
class Plan:
    """What ``launcher plan`` prints: the memory breakdown and one row per instance type."""

    base_model: str
    model: ModelShape
    method: str
    memory: MemoryEstimate
    dataset: DatasetTokens
    epochs: int
    candidates: list[Candidate]
    requested: str | None  # 'H100:1' or an instance type, when the spec names one
    prices_as_of: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "base_model": self.base_model,
            "model": self.model.summary(),
            "method": self.method,
            "memory": self.memory.to_dict(),
            "dataset": asdict(self.dataset),
            "epochs": self.epochs,
            "requested": self.requested,
            "prices_as_of": self.prices_as_of,
            "currency": catalog.load("prices")["currency"],
            "candidates": [asdict(c) for c in self.candidates],
            "notes": self.notes,
        }


def gpu_config(config: TrainConfig) -> TrainConfig:
    """The configuration the training entrypoint actually runs on a GPU. Its fast path (the default)
    sizes micro-batches from measured memory, so what must fit is one ``max_seq_len`` example. (QLoRA
    then spends at most the standard path's memory, ``estimate_memory`` of the spec as written, on
    checkpointing fewer layers; on an H200 that is none of them.)"""
    if config.fast_path == "off":
        return config
    return config.model_copy(update={"micro_batch_size": 1})


def plan(spec: JobSpec, *, dataset_tokens: int | None = None) -> Plan:
    """Memory, time and cost of ``spec`` on every priced instance type, cheapest first.

    ``dataset_tokens`` (training tokens in one epoch) skips reading the data; otherwise local data is
    counted (``count_dataset_tokens``) and remote data leaves time and cost unknown.
    """
    config = gpu_config(spec.train_config())
    shape = resolve_model(spec.base_model)
    memory = estimate_memory(shape, config)
    if dataset_tokens is not None:
        if dataset_tokens <= 0:
            raise SpecError(f"--tokens {dataset_tokens} must be a positive number of tokens in one epoch. To fix: pass e.g. --tokens 2000000")
        dataset = DatasetTokens(dataset_tokens, None, "given", "from --tokens")
    else:
        dataset = count_dataset_tokens(spec)
    overhead_h = catalog.load("throughput")["fixed_overhead_minutes"] / 60
    mean_example = dataset.tokens / dataset.examples if dataset.tokens and dataset.examples else None
    candidates = []
    for entry in instance_types():
        row = _candidate(entry, spec, memory)
        world = row.gpus * row.nodes
        speed = throughput(row.gpu, spec.method, shape, config.max_seq_len, row.gradient_checkpointing)
        if speed is not None:
            row.tokens_per_s = speed.tokens_per_s * data_parallel_speedup(world)
            row.throughput_source = speed.basis
        if dataset.tokens is not None and row.tokens_per_s:
            row.training_tokens = _training_tokens(config, dataset.tokens, mean_example, world)
            row.hours = row.training_tokens / row.tokens_per_s / 3600 + overhead_h
            row.on_demand_cost = row.hours * row.on_demand_per_hour * row.nodes
            row.spot_cost = row.hours * row.spot_per_hour * row.nodes if row.spot_allowed and row.spot_per_hour is not None else None
        candidates.append(row)
    candidates.sort(key=lambda c: (not c.fits, c.on_demand_cost if c.on_demand_cost is not None else c.on_demand_per_hour, c.instance_type))
    return Plan(
        base_model=spec.base_model,
        model=shape,
        method=spec.method,
        memory=memory,
        dataset=dataset,
        epochs=config.epochs,
        candidates=candidates,
        requested=_requested_label(spec),
        prices_as_of=catalog.load("prices")["as_of"],
        notes=_notes(spec, shape, candidates),
    )


def _candidate(entry: dict[str, Any], spec: JobSpec, memory: MemoryEstimate) -> Candidate:
    compute = spec.compute
    checkpointing, fits = choose_checkpointing(memory, entry["gpu"], spec.training.gradient_checkpointing)
    need, have = memory.total(checkpointing), usable_bytes(entry["gpu"])
    if fits:
        reason = f"{need / GIB:.1f} of {have / GIB:.1f} GiB" + (" with checkpointing" if checkpointing else "")
    else:
        reason = f"needs {need / GIB:.1f} GiB per GPU, {entry['gpu']} has {have / GIB:.1f} GiB"
    if compute.instance_type:
        requested = entry["instance_type"] == compute.instance_type
    else:
        requested = bool(compute.accelerator) and (entry["gpu"], entry["gpus"]) == (compute.accelerator.kind, compute.accelerator.count)
    return Candidate(
        cloud=entry["cloud"], instance_type=entry["instance_type"], gpu=entry["gpu"], gpus=entry["gpus"], nodes=compute.nodes,
        fits=fits, reason=reason, gradient_checkpointing=checkpointing, memory_needed=need, gpu_memory=have,
        on_demand_per_hour=entry["on_demand"], spot_per_hour=entry.get("spot"), spot_allowed=entry.get("spot_allowed", False),
        requested=requested, note=entry.get("note", ""),
    )  # fmt: skip


def choose_checkpointing(memory: MemoryEstimate, gpu: str, mode: str = "auto") -> tuple[bool, bool]:
    """(gradient checkpointing on?, fits?) on one ``gpu``: 'on'/'off' are kept; 'auto' turns
    checkpointing on only when the job does not fit without it (it costs about a quarter of the speed)."""
    have = usable_bytes(gpu)
    if mode == "auto":
        checkpointing = memory.total(False) > have
    else:
        checkpointing = mode == "on"
    return checkpointing, memory.total(checkpointing) <= have


def _training_tokens(config: TrainConfig, epoch_tokens: int, mean_example: float | None, world: int) -> int:
    tokens = epoch_tokens * config.epochs
    if config.max_steps:
        per_row = config.max_seq_len if config.packing or mean_example is None else mean_example
        tokens = min(tokens, int(config.max_steps * config.micro_batch_size * config.gradient_accumulation_steps * world * per_row))
    return tokens


def _requested_label(spec: JobSpec) -> str | None:
    if spec.compute.instance_type:
        return spec.compute.instance_type
    return str(spec.compute.accelerator) if spec.compute.accelerator else None


def _notes(spec: JobSpec, shape: ModelShape, candidates: list[Candidate]) -> list[str]:
    notes = []
    compute = spec.compute
    requested = [c for c in candidates if c.requested]
    if compute.instance_type and not requested:
        known = [c.instance_type for c in candidates]
        notes.append(
            f"compute.instance_type '{compute.instance_type}' is not in the price table, so it is not checked.{did_you_mean(compute.instance_type, known)}"
        )
    elif compute.accelerator and not requested:
        notes.append(f"no priced instance type has exactly {compute.accelerator}; rows with {compute.accelerator.kind} are checked per GPU")
    if spec.compute.spot and requested and not any(c.spot_allowed for c in requested):
        notes.append(f"spot is requested but {requested[0].instance_type} offers no spot capacity here: {requested[0].note or 'see prices.json'}")
    if spec.method == "qlora" and spec.training.fast_path == "off":
        notes.append("QLoRA assumes embeddings, lm_head and norms stay bf16; with fast_path: off, peft's prepare_model_for_kbit_training upcasts them (and the activations) to fp32")
    if spec.training.use_dora:
        notes.append("DoRA's extra activation memory (it materialises each adapted weight's norm) is not modelled")
    if any(c.gpus * c.nodes > 1 for c in candidates):
        notes.append("multi-GPU rows assume data parallelism (DDP): every GPU holds the whole model, so memory per GPU does not shrink. "
                     "The training entrypoint runs on one GPU today; those rows show what data parallelism would give")
    cap = spec.training.max_memory_gib
    if cap is not None and spec.training.fast_path != "off":
        least = estimate_memory(shape, gpu_config(spec.train_config()).model_copy(update={"gradient_checkpointing": "on"}))
        need = least.total(True) - CUDA_CONTEXT_BYTES
        if need > cap * GIB:
            notes.append(f"max_memory_gib {cap:g} is below the {need / GIB:.1f} GiB one max_seq_len example needs with every layer "
                         "checkpointed; the run will take that much")
    target = qlora_memory_target(shape, spec.train_config()) if spec.training.fast_path != "off" else None
    if target is not None:
        notes.append(f"QLoRA's fast path uses up to {target / GIB:.1f} GiB of GPU memory (what micro_batch_size "
                     f"{spec.training.micro_batch_size} x max_seq_len {spec.training.max_seq_len} takes on the standard path), "
                     "checkpointing as few layers as fit. To change it: max_memory_gib")
    if spec.training.max_seq_len > shape.max_positions > 0:
        notes.append(f"max_seq_len {spec.training.max_seq_len} is above {shape.name}'s max_position_embeddings {shape.max_positions}")
    return notes


def qlora_memory_target(shape: ModelShape, config: TrainConfig) -> int | None:
    """Bytes QLoRA's fast path may take by default (None: not QLoRA, or a limit is set): what the
    standard path's tensors would take for the config as written (``micro_batch_size`` padded rows of
    ``max_seq_len`` tokens, every layer checkpointed, full logits). QLoRA is chosen for memory, so the
    fast path spends no more than that, on checkpointing fewer layers."""
    if config.method != "qlora" or config.gradient_checkpointing != "auto" or config.max_memory_gib is not None:
        return None
    return estimate_memory(shape, config.model_copy(update={"gradient_checkpointing": "on"})).tensors(True)


def check_fits(spec: JobSpec) -> MemoryEstimate | None:
    """Raise SpecError when the GPU the spec asks for (compute.accelerator, or the GPU of
    compute.instance_type) cannot hold the job. Returns the estimate; None when there is nothing to
    check (no GPU requested, an instance type or base model the catalog does not know)."""
    compute = spec.compute
    if compute.accelerator:
        kind, asked = compute.accelerator.kind, f"compute.accelerator {compute.accelerator}"
    elif compute.instance_type:
        entry = next((e for e in instance_types() if e["instance_type"] == compute.instance_type), None)
        if entry is None:
            return None
        kind, asked = entry["gpu"], f"compute.instance_type {compute.instance_type} ({entry['gpus']}x {entry['gpu']})"
    else:
        return None
    shape = find_model(spec.base_model)
    if shape is None:
        return None
    config = gpu_config(spec.train_config())
    memory = estimate_memory(shape, config)
    mode = config.gradient_checkpointing
    checkpointing, fits = choose_checkpointing(memory, kind, mode)
    if fits:
        return memory
    need, have = memory.total(checkpointing), usable_bytes(kind)
    if config.micro_batch_size != spec.training.micro_batch_size:  # what is planned is what the fast path runs
        batch = (f"one max_seq_len {config.max_seq_len} example per micro-batch: the GPU fast path sizes its micro-batches "
                 f"itself, micro_batch_size {spec.training.micro_batch_size} only counts the rows of a step")
    else:
        batch = f"micro_batch_size {config.micro_batch_size} x max_seq_len {config.max_seq_len} tokens per micro-batch"
    raise SpecError(
        f"the job needs {need / GIB:.1f} GiB per GPU but an {kind} has {have / GIB:.1f} GiB ({asked}; {spec.base_model}, "
        f"{spec.method}, {batch}). To fix: {_fixes(shape, config, kind)}"
    )


def _fixes(shape: ModelShape, config: TrainConfig, kind: str) -> str:
    """The changes that would make the job fit, cheapest first."""

    def fits(**changes: Any) -> bool:
        changed = config.model_copy(update=changes)
        return choose_checkpointing(estimate_memory(shape, changed), kind, changed.gradient_checkpointing)[1]

    fixes = []
    if config.gradient_checkpointing == "off" and fits(gradient_checkpointing="on"):
        fixes.append("gradient_checkpointing: on")
    if config.method == "lora" and fits(method="qlora"):
        fixes.append("method: qlora")
    smaller = next((mb for mb in range(config.micro_batch_size - 1, 0, -1) if fits(micro_batch_size=mb)), None)
    if smaller:
        fixes.append(f"micro_batch_size: {smaller} (raise gradient_accumulation_steps to keep the batch)")
    elif config.micro_batch_size > 1:
        fixes.append("a smaller micro_batch_size")
    memory = estimate_memory(shape, config)
    bigger = sorted(
        (k for k in catalog.load("gpus")["kinds"] if usable_bytes(k) > usable_bytes(kind)
         and choose_checkpointing(memory, k, config.gradient_checkpointing)[1]),
        key=usable_bytes,
    )  # fmt: skip
    if bigger:
        fixes.append(f"a GPU with more memory ({bigger[0]})")
    if not fixes:
        return "a smaller base model or max_seq_len"
    return ", ".join(fixes[:-1]) + (" or " if len(fixes) > 1 else "") + fixes[-1]
