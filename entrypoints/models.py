"""Base model and tokenizer: where they come from, and how LoRA / QLoRA wrap them.

``base_model`` is one of:

* ``tiny-llama``: built offline (see ``tiny_llama``);
* a local folder with ``config.json``;
* a local ``.gguf`` file (llama.cpp's format, often quantised): dequantised once by transformers and the
  ``gguf`` package into a normal checkpoint folder in the cache (see ``resolve_gguf``);
* ``s3://bucket/prefix`` or ``gs://bucket/prefix`` (a ``gs://`` one read through the ``/gcs`` mount on
  Vertex AI), or a ``model.tar.gz`` there: downloaded into the cache by ``launcher.artifacts.fetch``,
  once per version of the objects (the same download path as a job's outputs);
* a Hugging Face model id, downloaded inside the job. Its token is read from the environment
  variable the job names (``hf_token_env``, default ``HF_TOKEN``), never from hyperparameters.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher import artifacts
from launcher.errors import MissingExtraError, NotFoundError, SpecError
from launcher.state import atomic_folder, cache_root

if TYPE_CHECKING:
    from launcher.spec import TrainConfig

# A plain fallback chat template for base models that ship none; EOS closes each assistant turn.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '### ' + message['role'] | capitalize + ':\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
)


def resolve(base_model: str) -> str:
    """A local folder or a Hub id that ``from_pretrained`` can load."""
    if base_model == "tiny-llama":
        from entrypoints import tiny_llama

        return str(tiny_llama.materialize(cache_root()))
    if base_model.startswith("s3://"):
        return str(artifacts.fetch(base_model))
    if base_model.startswith("gs://"):
        from entrypoints.platform import gcs_path

        mounted = gcs_path(base_model)
        return str(mounted) if mounted.is_dir() else str(artifacts.fetch(base_model))
    if is_gguf(base_model):
        return str(resolve_gguf(base_model))
    path = Path(base_model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise NotFoundError(f"base model folder '{path}' has no config.json. To fix: point at a saved Hugging Face model")
        return str(path)
    if base_model.startswith((".", "/", "~")):
        raise NotFoundError(f"base model folder '{base_model}' does not exist. To fix: check the path")
    return base_model  # a Hub id


SECRET_ENV = "LAUNCHER_HF_TOKEN_SECRET"  # a secret's ARN or name; its value is read inside the job only


def hub_token(config: TrainConfig) -> str | None:
    """The Hub token: the environment variable the job names (``hf_token_env``), or the secret the job's
    environment names in ``LAUNCHER_HF_TOKEN_SECRET``, read once at start: a Secret Manager version
    (``projects/P/secrets/S/versions/V``, Vertex AI) or a Secrets Manager ARN or name (SageMaker). The
    value never travels in the job's request, settings or logs."""
    token = os.environ.get(config.hf_token_env)
    if token:
        return token
    secret = os.environ.get(SECRET_ENV)
    if not secret:
        return None
    from launcher import clouds

    if secret.startswith("projects/"):
        with clouds.google_errors(f"secret {secret}", "secretmanager.versions.access",
                                  missing=f"create the secret, or correct vertex.hf_token_secret ({secret})"):
            name = secret if "/versions/" in secret else f"{secret}/versions/latest"
            token = clouds.secret_manager_client().access_secret_version(name=name).payload.data.decode().strip()
        os.environ[config.hf_token_env] = token
        return token
    with clouds.aws_errors(f"secret {secret}", "secretsmanager:GetSecretValue",
                           missing=f"create the secret, or correct sagemaker.hf_token_secret ({secret})"):
        token = clouds.aws_client("secretsmanager").get_secret_value(SecretId=secret)["SecretString"].strip()
    os.environ[config.hf_token_env] = token
    return token


@contextlib.contextmanager
def hub_errors(base_model: str):
    """A Hub model that cannot be had (no network, a wrong id, a gated model without a token) is one
    line naming the fix, not a traceback: transformers raises OSError for all of them."""
    try:
        yield
    except OSError as exc:
        if "://" in base_model or base_model.startswith((".", "/", "~")) or Path(base_model).expanduser().exists():
            raise
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise NotFoundError(
            f"base model '{base_model}' cannot be loaded from the Hugging Face Hub: {reason}. To fix: check the id "
            "and the network (HF_HUB_OFFLINE must be unset to download), and for a gated model put a token in the "
            "environment variable hf_token_env names"
        ) from None


def load_tokenizer(base_model: str, token: str | None = None, *, convert: bool = True):
    """The base model's tokenizer, with a pad token and a chat template guaranteed.

    ``convert=False`` (``launcher validate`` and ``plan``): a ``.gguf`` not yet converted gives its
    tokenizer straight from the file (seconds) instead of being dequantised into the cache first."""
    from transformers import AutoTokenizer

    if is_gguf(base_model) and not convert and _gguf_cached(base_model) is None:
        path = _gguf_source(base_model)
        _require_gguf(path)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    else:
        with hub_errors(base_model):
            tokenizer = AutoTokenizer.from_pretrained(resolve(base_model), token=token)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer


def load_base(config: TrainConfig, device: str, *, dtype, attn_implementation: str, quant_storage=None):
    """The frozen base model on ``device``: ``dtype`` weights for LoRA, 4-bit NF4 (double-quantised,
    ``dtype`` compute) for QLoRA. ``quant_storage``: the dtype the packed 4-bit weights are stored in
    (FSDP shards tensors of one dtype with the rest of the model; default uint8)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype, "attn_implementation": attn_implementation, "token": hub_token(config)}
    if config.method == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise MissingExtraError("bitsandbytes", "train", "QLoRA") from None
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            **({"bnb_4bit_quant_storage": quant_storage} if quant_storage is not None else {}),
        )
        kwargs["device_map"] = {"": device if device != "cuda" else torch.cuda.current_device()}
    with hub_errors(config.base_model):
        model = AutoModelForCausalLM.from_pretrained(resolve(config.base_model), **kwargs)
    if config.method != "qlora":
        model.to(device)
    return model


def add_lora(model, config: TrainConfig, *, gradient_checkpointing: bool, upcast_non_quantized: bool = True):
    """Freeze the base and wrap it with LoRA adapters.

    ``upcast_non_quantized``: peft's ``prepare_model_for_kbit_training`` casts a QLoRA model's
    embeddings, norms and head to fp32 (and with them the activations); the GPU fast path keeps them in
    bf16 and only does the rest of that preparation."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    quantized = getattr(model, "is_loaded_in_4bit", False) or any(
        type(m).__name__ == "Linear4bit" for m in model.modules()
    )
    if quantized:
        disable_cpu_inference_repack(model)
    if quantized and upcast_non_quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    else:
        for param in model.parameters():
            param.requires_grad_(False)
        if gradient_checkpointing:
            enable_checkpointing(model)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        use_rslora=config.use_rslora,
        use_dora=config.use_dora,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    model.config.use_cache = False
    return model


def enable_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing on every decoder layer (transformers >= 5.24 renamed
    ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable``). Both also make the
    embeddings' output require grad, which only reentrant checkpointing needs: undone, so backward
    does not compute the first layer's input gradient for nothing."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if getattr(model, "_require_grads_hooks", None) or getattr(model, "_require_grads_hook", None):
        model.disable_input_require_grads()


def disable_cpu_inference_repack(model) -> None:
    """bitsandbytes on CPUs with AVX512-BF16 repacks 4-bit weights at the first no-grad forward for an
    inference kernel without autograd, after which training gradients are silently wrong (NOTES.md).
    Turning that kernel off on every 4-bit layer keeps eval-then-train correct."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


# --- GGUF files ---------------------------------------------------------------------------------------
# Bumped when the converted folder's contents change, so older conversions are not reused.
GGUF_CONVERSION_VERSION = 1
GGUF_SOURCE_FILE = "gguf-source.json"  # in the converted folder: where it came from (the manifest copies it)
GGUF_MAGIC = b"GGUF"


def is_gguf(base_model: str) -> bool:
    """A local GGUF file: a base_model ending in .gguf that is not a URI or a model folder."""
    return base_model.lower().endswith(".gguf") and "://" not in base_model and not Path(base_model).expanduser().is_dir()


def resolve_gguf(base_model: str) -> Path:
    """The checkpoint folder converted from a local .gguf file, made once and cached.

    The cache key is the file's resolved path, size and modification time, so finding a cached
    conversion costs one ``stat`` whatever the file's size (hashing a multi-GB GGUF on every run would
    not); a file replaced or touched gets a new conversion. The content's SHA-256 is computed once,
    during the conversion, and recorded in the folder (``provenance``)."""
    cached = _gguf_cached(base_model)
    if cached is not None:
        return cached
    path = _gguf_source(base_model)
    _require_gguf(path)
    target = _gguf_folder(path)
    print(f"converting GGUF base model {path} into {target} (once; later runs reuse it)", flush=True)
    return atomic_folder(target, lambda tmp: _convert_gguf(path, tmp))


def provenance(base_model: str) -> dict[str, Any] | None:
    """Where the resolved base model came from, for the job's manifest: for a .gguf, the source file,
    its SHA-256 and size, the converted folder, its dtype and the converting packages' versions; None
    for other bases."""
    if not is_gguf(base_model):
        return None
    folder = resolve_gguf(base_model)
    return {**json.loads((folder / GGUF_SOURCE_FILE).read_text(encoding="utf-8")), "cache_folder": str(folder)}


def _gguf_source(base_model: str) -> Path:
    path = Path(base_model).expanduser()
    if not path.is_file():
        raise NotFoundError(f"base model file '{base_model}' does not exist. To fix: check the path (a .gguf base_model is a local file)")
    with path.open("rb") as handle:
        magic = handle.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise SpecError(f"base model '{base_model}' is not a GGUF file (it does not start with 'GGUF'). "
                        "To fix: point base_model at a .gguf file written by llama.cpp, or at a model folder")
    return path.resolve()


def _gguf_folder(path: Path) -> Path:
    stat = path.stat()
    key = f"{GGUF_CONVERSION_VERSION}\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return cache_root() / "gguf" / f"{path.stem[:48]}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _gguf_cached(base_model: str) -> Path | None:
    path = Path(base_model).expanduser()
    if not path.is_file():
        return None
    folder = _gguf_folder(path.resolve())
    return folder if (folder / "config.json").is_file() else None


def _require_gguf(path: Path) -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise MissingExtraError("gguf", "train", f"Loading the GGUF base model {path}") from None


def _convert_gguf(path: Path, folder: Path) -> None:
    """Dequantise ``path`` into ``folder`` as a bf16 safetensors checkpoint with its tokenizer.

    transformers dequantises a GGUF to float32 on load, but refuses to ``save_pretrained`` a model
    loaded that way: the weights are copied into a fresh model of the same config and that one is
    saved. bf16 because it halves the folder (269 MB instead of 538 MB for SmolLM2-135M) at no cost
    worth having: the quantised weights carry far less precision than bf16 (a Q4_1 weight is one of 16
    levels per block), models are published in bf16, and the GPU path computes in bf16 anyway; the eval
    loss of SmolLM2-135M-Instruct on the example data moved by 1e-6 relative against fp32. The CPU path
    loads it back in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError) as exc:  # an architecture or tensor type transformers cannot read
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"transformers cannot load the GGUF base model {path} ({reason[:200]}). "
                        "To fix: use a GGUF of an architecture transformers reads (Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3, ...) "
                        "or a model folder") from None
    config = loaded.config
    del config.quantization_config  # the saved folder is an ordinary checkpoint, not a GGUF one
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()
    del loaded
    model.to(torch.bfloat16).save_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(folder)
    stat = path.stat()
    source = {
        "source": str(path),
        "sha256": digest.hexdigest(),
        "size_bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "dtype": "bfloat16",
        "conversion_version": GGUF_CONVERSION_VERSION,
        "conversion_s": round(time.perf_counter() - started, 1),
        "packages": {name: _version(name) for name in ("gguf", "transformers", "torch")},
    }
    (folder / GGUF_SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
