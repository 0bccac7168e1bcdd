"""Memory, time and cost of a fine-tuning job, before anything is billed (``launcher plan``).

Everything here is arithmetic over data files in ``launcher/catalog/``: ``models.json`` (architecture
numbers), ``gpus.json`` (memory, bf16 peak), ``prices.json`` (the one dated price table) and
``throughput.json`` (measured tokens/s). Calibrating or re-pricing is a data edit. No torch here; the
tokenizer is imported only when the dataset's tokens are counted, through the training entrypoint's
own loading and tokenisation (``launcher.tokens``, as ``launcher validate`` counts).

The memory model and the fast-path and checkpointing decisions are ``launcher.memory``'s, shared with
the training entrypoint; this module finds the model's shape (``find_model``: the catalog, a local
``config.json``, a ``.gguf`` header, the Hugging Face cache) and plans the job as the entrypoint runs
it on a GPU (``memory.runtime_policy(config, "cuda")``).

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
doubling of GPUs. A multi-GPU row runs DDP where the job fits one GPU and FSDP2 where only sharding
makes it fit (``launcher.memory.parallelism``, as the entrypoint decides); FSDP's all-gathers are not
in the time estimate. Hours = training tokens / throughput + a fixed overhead (model
download, evaluation); cost = hours x $/h on demand and on spot, from ``prices.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher import catalog
from launcher.errors import MissingExtraError, NotFoundError, SpecError, did_you_mean, reason
from launcher.memory import (
    CUDA_CONTEXT_BYTES,
    GIB,
    MemoryEstimate,
    Parallelism,
    ModelShape,
    Policy,
    choose_checkpointing,
    estimate_memory,
    parallelism,
    qlora_memory_target,
    runtime_policy,
)

if TYPE_CHECKING:
    from launcher.spec import JobSpec, TrainConfig


# --- model shapes -----------------------------------------------------------------------------------
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


# --- GPUs, prices, throughput --------------------------------------------------------------------------
def gpu_info(kind: str) -> dict[str, Any]:
    return catalog.load("gpus")["kinds"][kind]


def usable_bytes(kind: str) -> int:
    info = gpu_info(kind)
    return int(info.get("usable_gib", info["memory_gib"]) * GIB)


def machine_for(cloud: str, compute: Any) -> dict[str, Any]:
    """The instance/machine type a job runs on in ``cloud``: ``compute.instance_type``, or the cheapest
    type with the accelerator's GPU kind and at least its count (the table ``plan`` prices). The entry
    of ``instance_types`` (gpus 0 for an unpriced explicit type)."""
    types = {t["instance_type"]: t for t in instance_types() if t["cloud"] == cloud}
    label = {"sagemaker": "SageMaker instance type", "vertex": "Vertex AI machine type"}.get(cloud, f"{cloud} type")
    if compute.instance_type:
        return types.get(compute.instance_type) or {"cloud": cloud, "instance_type": compute.instance_type, "gpu": None, "gpus": 0}
    accelerator = compute.accelerator
    if accelerator is None:
        raise SpecError(f"a {cloud} job needs a GPU. To fix: set compute.accelerator (such as 'A100:1' or 'H100:1') or compute.instance_type")
    fitting = [t for t in types.values() if t["gpu"] == accelerator.kind and t["gpus"] >= accelerator.count]
    if not fitting:
        kinds = sorted({t["gpu"] for t in types.values()})
        raise SpecError(f"no {label} has {accelerator}. To fix: choose one of {', '.join(kinds)} (or set compute.instance_type)")
    return min(fitting, key=lambda t: (t["gpus"], t["on_demand"]))


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
    """Count the training set's tokens as training tokenises them (``launcher.tokens``, which
    ``launcher validate`` counts with too) when the model's tokenizer is here, else estimate them as
    characters / 4 (+4 per message). Remote data (s3://, gs://) is not read, nor is anything downloaded."""
    from launcher.data import load_examples
    from launcher.tokens import token_counter

    uri = spec.data.train
    if "://" in uri:
        return DatasetTokens(None, None, "unknown", f"{uri} is remote and is not read here, so time and cost are unknown. To fix: pass --tokens N (tokens in one epoch)")
    examples = load_examples(uri)
    counter = token_counter(spec.base_model, spec.hf_token_env, download=False)
    if counter.exact:
        lengths = [counter.count(e) for e in examples]
        how = f"{spec.base_model} tokenizer and chat template"
    else:
        lengths = [sum(len(content) for _, content in e.messages) // 4 + 4 * len(e.messages) for e in examples]
        how = f"characters / 4 because {counter.reason}"
    cap = spec.training.max_seq_len
    total = sum(min(n, cap) for n in lengths)
    note = f"{len(examples):,} examples, {how}"
    if spec.data.eval is None:
        held_out = spec.training.eval_fraction
        total = round(total * (1 - held_out))
        note += f", less the {held_out:.0%} held out for evaluation"
    return DatasetTokens(total, len(examples), "counted" if counter.exact else "estimated", note)


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
    strategy: str = "single"  # 'single' (one GPU), 'ddp' (a replica per GPU) or 'fsdp' (sharded weights)
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


def plan(spec: JobSpec, *, dataset_tokens: int | None = None) -> Plan:
    """Memory, time and cost of ``spec`` on every priced instance type, cheapest first.

    ``dataset_tokens`` (training tokens in one epoch) skips reading the data; otherwise local data is
    counted (``count_dataset_tokens``) and remote data leaves time and cost unknown.
    """
    policy = runtime_policy(spec.train_config(), "cuda")
    config = policy.must_fit
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
        row = _candidate(entry, spec, memory, shape, config)
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
        notes=_notes(spec, shape, candidates, policy),
    )


def _fit(memory: MemoryEstimate, shape: ModelShape, config: TrainConfig, kind: str, gpus: int) -> Parallelism:
    """How the job runs on ``gpus`` GPUs of ``kind``, as the entrypoint decides it."""
    return parallelism(memory, shape, usable_bytes(kind), gpus, config.gradient_checkpointing, config.distributed)


def _candidate(entry: dict[str, Any], spec: JobSpec, memory: MemoryEstimate, shape: ModelShape, config: TrainConfig) -> Candidate:
    compute = spec.compute
    world = entry["gpus"] * compute.nodes
    fit = _fit(memory, shape, config, entry["gpu"], world)
    checkpointing, fits, need, have = fit.checkpointing, fit.fits, fit.bytes_per_gpu, usable_bytes(entry["gpu"])
    how = {"single": "", "ddp": f", DDP over {world} GPUs", "fsdp": f", FSDP over {world} GPUs"}[fit.strategy]
    if fits:
        reason = f"{need / GIB:.1f} of {have / GIB:.1f} GiB" + (" with checkpointing" if checkpointing else "") + how
    else:
        reason = f"needs {need / GIB:.1f} GiB per GPU{how}, {entry['gpu']} has {have / GIB:.1f} GiB"
    if compute.instance_type:
        requested = entry["instance_type"] == compute.instance_type
    else:
        requested = bool(compute.accelerator) and (entry["gpu"], entry["gpus"]) == (compute.accelerator.kind, compute.accelerator.count)
    return Candidate(
        cloud=entry["cloud"], instance_type=entry["instance_type"], gpu=entry["gpu"], gpus=entry["gpus"], nodes=compute.nodes,
        fits=fits, reason=reason, gradient_checkpointing=checkpointing, memory_needed=need, gpu_memory=have, strategy=fit.strategy,
        on_demand_per_hour=entry["on_demand"], spot_per_hour=entry.get("spot"), spot_allowed=entry.get("spot_allowed", False),
        requested=requested, note=entry.get("note", ""),
    )  # fmt: skip


def _training_tokens(config: TrainConfig, epoch_tokens: int, mean_example: float | None, world: int) -> int:
    tokens = epoch_tokens * config.epochs
    if config.max_steps:
        per_row = config.max_seq_len if config.packing or mean_example is None else mean_example
        # A step is micro_batch_size x gradient_accumulation_steps rows however many GPUs share it.
        tokens = min(tokens, int(config.max_steps * config.micro_batch_size * config.gradient_accumulation_steps * per_row))
    return tokens


def _requested_label(spec: JobSpec) -> str | None:
    if spec.compute.instance_type:
        return spec.compute.instance_type
    return str(spec.compute.accelerator) if spec.compute.accelerator else None


def _notes(spec: JobSpec, shape: ModelShape, candidates: list[Candidate], policy: Policy) -> list[str]:
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
    if spec.method == "qlora" and not policy.fast:
        notes.append("QLoRA assumes embeddings, lm_head and norms stay bf16; with fast_path: off, peft's prepare_model_for_kbit_training upcasts them (and the activations) to fp32")
    if spec.training.use_dora:
        notes.append("DoRA's extra activation memory (it materialises each adapted weight's norm) is not modelled")
    if any(c.gpus * c.nodes > 1 for c in candidates):
        notes.append("multi-GPU rows run one process per GPU (torchrun): DDP where the job fits one GPU (memory per GPU does not "
                     "shrink), FSDP2 where only sharding the weights makes it fit; FSDP's communication is not in the time estimate")
    single = [c for c in candidates if c.gpus * c.nodes == 1]
    if single and not any(c.fits for c in single):
        sharded = [c for c in candidates if c.fits and c.strategy == "fsdp"]
        if sharded:
            best = min(sharded, key=lambda c: c.on_demand_cost if c.on_demand_cost is not None else c.on_demand_per_hour)
            cost = f", about {best.on_demand_cost:,.0f} {catalog.load('prices')['currency']} on demand" if best.on_demand_cost else ""
            notes.append(f"one GPU is not enough for this job: {best.cloud} {best.instance_type} ({best.gpus}x {best.gpu}) fits it "
                         f"with FSDP ({best.memory_needed / GIB:.1f} GiB per GPU){cost}. To use it: compute.accelerator "
                         f"{best.gpu}:{best.gpus}")
    cap = spec.training.max_memory_gib
    if cap is not None and policy.fast:
        least = estimate_memory(shape, policy.must_fit.model_copy(update={"gradient_checkpointing": "on"}))
        need = least.total(True) - CUDA_CONTEXT_BYTES
        if need > cap * GIB:
            notes.append(f"max_memory_gib {cap:g} is below the {need / GIB:.1f} GiB one max_seq_len example needs with every layer "
                         "checkpointed; the run will take that much")
    target = qlora_memory_target(shape, spec.train_config()) if policy.fast else None
    if target is not None:
        notes.append(f"QLoRA's fast path uses up to {target / GIB:.1f} GiB of GPU memory (what micro_batch_size "
                     f"{spec.training.micro_batch_size} x max_seq_len {spec.training.max_seq_len} takes on the standard path), "
                     "checkpointing as few layers as fit. To change it: max_memory_gib")
    if spec.training.max_seq_len > shape.max_positions > 0:
        notes.append(f"max_seq_len {spec.training.max_seq_len} is above {shape.name}'s max_position_embeddings {shape.max_positions}")
    return notes


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
    config = runtime_policy(spec.train_config(), "cuda").must_fit
    memory = estimate_memory(shape, config)
    gpus = (compute.accelerator.count if compute.accelerator else next(
        e["gpus"] for e in instance_types() if e["instance_type"] == compute.instance_type)) * compute.nodes
    fit = _fit(memory, shape, config, kind, gpus)
    if fit.fits:
        return memory
    need, have = fit.bytes_per_gpu, usable_bytes(kind)
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
        return choose_checkpointing(estimate_memory(shape, changed), usable_bytes(kind), changed.gradient_checkpointing)[1]

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
         and choose_checkpointing(memory, usable_bytes(k), config.gradient_checkpointing)[1]),
        key=usable_bytes,
    )  # fmt: skip
    if bigger:
        fixes.append(f"a GPU with more memory ({bigger[0]})")
    if not fixes:
        return "a smaller base model or max_seq_len"
    return ", ".join(fixes[:-1]) + (" or " if len(fixes) > 1 else "") + fixes[-1]
