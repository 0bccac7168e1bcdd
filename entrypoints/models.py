"""Base model and tokenizer: where they come from, and how LoRA / QLoRA wrap them.

``base_model`` is one of:

* ``tiny-llama``: built offline (see ``tiny_llama``);
* a local folder with ``config.json``;
* ``s3://bucket/prefix`` (downloaded with boto3, which honours ``AWS_ENDPOINT_URL``) or
  ``gs://bucket/prefix`` (read through the ``/gcs`` mount on Vertex AI, else downloaded with
  google-cloud-storage);
* a Hugging Face model id, downloaded inside the job. Its token is read from the environment
  variable the job names (``hf_token_env``, default ``HF_TOKEN``), never from hyperparameters.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.errors import MissingExtraError, NotFoundError

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


def cache_root() -> Path:
    return Path(os.environ.get("LAUNCHER_CACHE") or Path.home() / ".cache" / "launcher")


def resolve(base_model: str) -> str:
    """A local folder or a Hub id that ``from_pretrained`` can load."""
    if base_model == "tiny-llama":
        from entrypoints import tiny_llama

        return str(tiny_llama.materialize(cache_root()))
    if base_model.startswith("s3://"):
        return str(_download(base_model))
    if base_model.startswith("gs://"):
        from entrypoints.platform import gcs_path

        mounted = gcs_path(base_model)
        return str(mounted) if mounted.is_dir() else str(_download(base_model))
    path = Path(base_model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise NotFoundError(f"base model folder '{path}' has no config.json. To fix: point at a saved Hugging Face model")
        return str(path)
    if base_model.startswith((".", "/", "~")):
        raise NotFoundError(f"base model folder '{base_model}' does not exist. To fix: check the path")
    return base_model  # a Hub id


def hub_token(config: TrainConfig) -> str | None:
    return os.environ.get(config.hf_token_env) or None


def load_tokenizer(base_model: str, token: str | None = None):
    """The base model's tokenizer, with a pad token and a chat template guaranteed."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve(base_model), token=token)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer


def load_base(config: TrainConfig, device: str, *, dtype, attn_implementation: str):
    """The frozen base model on ``device``: ``dtype`` weights for LoRA, 4-bit NF4 (double-quantised,
    ``dtype`` compute) for QLoRA."""
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
        )
        kwargs["device_map"] = {"": device if device != "cuda" else torch.cuda.current_device()}
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


def _cache_folder(uri: str) -> Path:
    """Where a remote model folder is downloaded to (complete once it holds config.json)."""
    return cache_root() / "models" / hashlib.sha256(uri.encode()).hexdigest()[:16]


def _download(uri: str) -> Path:
    """The model folder under an s3:// or gs:// prefix, downloaded once into the cache (atomically, so a
    cached folder is complete)."""
    target = _cache_folder(uri)
    if (target / "config.json").is_file():
        return target
    scheme, _, rest = uri.partition("://")
    bucket, _, prefix = rest.partition("/")
    if scheme == "s3":
        try:
            import boto3
        except ImportError:
            raise MissingExtraError("boto3", "aws", f"Loading the base model from {uri}") from None
        client = boto3.client("s3")
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]

        def download(key: str, dest: Path) -> None:
            client.download_file(bucket, key, str(dest))
    else:
        try:
            from google.cloud import storage
        except ImportError:
            raise MissingExtraError("google-cloud-storage", "gcp", f"Loading the base model from {uri}") from None
        blobs = {blob.name: blob for blob in storage.Client().list_blobs(bucket, prefix=prefix)}
        keys = list(blobs)

        def download(key: str, dest: Path) -> None:
            blobs[key].download_to_filename(str(dest))
    keys = [key for key in keys if not key.endswith("/")]
    if not keys:
        raise NotFoundError(f"no objects under {uri}. To fix: upload the model there or check the prefix")

    def fill(tmp: Path) -> None:
        for key in keys:
            dest = tmp / key[len(prefix):].lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            download(key, dest)

    return _atomic_folder(target, fill)


def _atomic_folder(target: Path, fill) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fill(tmp)
        tmp.rename(target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
