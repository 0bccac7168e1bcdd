"""The typed job spec: one description of a fine-tuning job that runs unchanged on every backend.

Two models matter:

* ``JobSpec``: what a user writes (YAML or Python): name, base model, method, data, training
  hyperparameters, compute, output, tags and backend sections.
* ``TrainConfig``: what the training container receives: base model, method and the flat
  hyperparameters. It is what ``entrypoints.train`` validates, whether it arrives as SageMaker's
  ``hyperparameters.json`` (every value a string), as Vertex command-line flags or as a local file.

Unknown keys are errors with a "did you mean" hint; every error is one line naming the key.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from launcher import catalog
from launcher.errors import NotFoundError, SpecError, did_you_mean

INTERRUPTED_EXIT_CODE = 75  # the training entrypoint's exit code after a SIGTERM checkpoint (EX_TEMPFAIL)
# The version of the settings' wire form (hyperparameters / arguments). A training image refuses settings
# of a newer schema than it knows, with one line naming the launcher version to install there.
SCHEMA_VERSION = 1
WIRE_KEYS = ("launcher_schema", "launcher_version")  # travel with the settings; not settings themselves


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class Hyperparameters(StrictModel):
    """Training knobs. Defaults follow common LoRA practice (r=16, alpha=32, all linear layers)."""

    # LoRA / QLoRA
    lora_r: PositiveInt = 16
    lora_alpha: Annotated[float, Field(gt=0)] = 32.0
    lora_dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    use_rslora: bool = False
    use_dora: bool = False
    # Optimisation
    learning_rate: Annotated[float, Field(gt=0, le=1.0)] = 2e-4
    epochs: PositiveInt = 3
    max_steps: PositiveInt | None = None
    micro_batch_size: PositiveInt = 4
    gradient_accumulation_steps: PositiveInt = 4
    warmup_ratio: Fraction = 0.03
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    max_grad_norm: Annotated[float, Field(ge=0.0)] = 1.0
    seed: int = 42
    # Data
    max_seq_len: Annotated[int, Field(ge=16)] = 1024
    packing: bool = True
    eval_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    max_truncated_fraction: Fraction = 0.05
    general_mix: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    # Evaluation and outputs
    eval_samples: Annotated[int, Field(ge=0)] = 32
    review_samples: Annotated[int, Field(ge=0)] = 16
    max_new_tokens: PositiveInt = 128
    forgetting_threshold_pct: Annotated[float, Field(gt=0)] = 10.0
    merge: bool = False
    # Run mechanics
    checkpoint_every: PositiveInt = 50
    keep_checkpoints: PositiveInt = 2
    logging_steps: PositiveInt = 10
    gradient_checkpointing: Literal["auto", "on", "off"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    # GPU fast path (see entrypoints/fast.py): padding-free token-budget micro-batches, attention within
    # each packed example only, fused kernels. "auto" = on with a CUDA GPU, off on the CPU.
    fast_path: Literal["auto", "on", "off"] = "auto"
    # Fast path on a GPU: "varlen" = PyTorch's FlashAttention varlen kernel (torch >= 2.10, Ampere or
    # newer), "flex" = FlexAttention with a document mask; auto = varlen where available, else flex.
    attention: Literal["auto", "varlen", "flex"] = "auto"
    micro_batch_tokens: Annotated[int, Field(ge=128)] | None = None  # fast path; None = sized from GPU memory
    kernels: Literal["auto", "liger", "none"] = "auto"  # fast path; auto = Liger-Kernel when installed
    # Fast path, LoRA only: the frozen bf16 base layers multiply in float8 (compute capability >= 8.9).
    # Off by default: it trades precision in the base's matmuls for speed (+23% on an H200, 0.04% eval
    # loss on the benchmark's synthetic task); measure your eval loss with it.
    fp8: Literal["off", "on"] = "off"
    # Fast path: torch.compile each decoder layer (static shapes, so it compiles once). Off: on an H200
    # it measured 13,067 tokens/s against 17,090 without, with attention varlen (+2-4% with flex).
    torch_compile: Literal["off", "layers"] = "off"
    # Fast path on a GPU: peak GiB the run's tensors may take (torch.cuda.max_memory_allocated; the CUDA
    # context comes on top). Within it, as few layers are checkpointed as fit. None = LoRA uses the GPU;
    # QLoRA what the standard path would take (micro_batch_size rows of max_seq_len, checkpointed).
    max_memory_gib: Annotated[float, Field(gt=0)] | None = None
    # Several processes (torchrun): "ddp" = a whole replica per GPU, "fsdp" = FSDP2, the frozen weights
    # sharded per decoder layer; auto = DDP when the job fits one GPU (launcher.memory.parallelism).
    distributed: Literal["auto", "ddp", "fsdp"] = "auto"

    @field_validator("gradient_checkpointing", "fast_path", "fp8", "torch_compile", mode="before")
    @classmethod
    def _on_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare on/off as a boolean (and it travels as "true"/"false" as a hyperparameter).
        return {True: "on", False: "off", "true": "on", "false": "off"}.get(value, value) if isinstance(value, (bool, str)) else value

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: Any) -> Any:
        # Hyperparameters arrive as strings on SageMaker: "q_proj,v_proj" or '["q_proj", "v_proj"]'.
        if isinstance(value, str) and value != "all-linear":
            value = value.strip()
            if value.startswith("["):
                try:
                    return json.loads(value)
                except json.JSONDecodeError:  # a Python list's str(), as SageMaker's toolkit passes it
                    import ast

                    return ast.literal_eval(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("target_modules")
    @classmethod
    def _non_empty_modules(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("needs at least one module name, or 'all-linear'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Hyperparameters:
        # Refusals that need only the settings: made when the spec is validated, before anything is
        # billed (the entrypoint validates the same model, so they hold there too).
        if self.fp8 == "on" and self.fast_path == "off":
            raise ValueError("fp8: on runs on the GPU fast path, which fast_path: off turns off. To fix: fp8: off, or fast_path: auto")
        if self.torch_compile == "layers" and self.fast_path == "off":
            raise ValueError("torch_compile: layers applies to the fast path, which fast_path: off turns off. "
                             "To fix: torch_compile: off, or fast_path: auto")
        return self._room_for_a_prompt()

    def _room_for_a_prompt(self) -> Hyperparameters:
        # Evaluation generates up to max_new_tokens after the prompt; an answer that long could never
        # have been trained on (training rows hold max_seq_len tokens, prompt included).
        if self.max_new_tokens >= self.max_seq_len:
            raise ValueError(
                f"max_new_tokens ({self.max_new_tokens}) must be below max_seq_len ({self.max_seq_len}): training rows "
                "hold the prompt and the answer in max_seq_len tokens. To fix: lower max_new_tokens or raise max_seq_len"
            )
        return self

    # Settings that change how a run is carried out or scored, not the adapter it trains: a resumed run
    # may change them (the job identity ignores them too). Every other key defines the training.
    RUN_ONLY: ClassVar[frozenset[str]] = frozenset({
        "eval_samples", "review_samples", "max_new_tokens", "forgetting_threshold_pct", "merge", "checkpoint_every",
        "keep_checkpoints", "logging_steps", "gradient_checkpointing", "fast_path", "attention", "micro_batch_tokens",
        "kernels", "torch_compile", "max_memory_gib", "distributed",
    })


class TrainConfig(Hyperparameters):
    """What the training container receives: the base model, the method and the hyperparameters."""

    base_model: str = "tiny-llama"
    method: Literal["lora", "qlora"] = "lora"
    hf_token_env: str = "HF_TOKEN"  # the NAME of the environment variable holding a Hub token

    RUN_ONLY: ClassVar[frozenset[str]] = Hyperparameters.RUN_ONLY | {"hf_token_env"}

    @model_validator(mode="after")
    def _method_fits_the_settings(self) -> TrainConfig:
        _check_method(self.method, self)
        return self

    def training_settings(self) -> dict[str, Any]:
        """The settings that define what is trained (everything but ``RUN_ONLY``), JSON-ready."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in self.RUN_ONLY}

    @classmethod
    def from_mapping(cls, values: dict[str, Any], source: str = "hyperparameters") -> TrainConfig:
        """Validate a mapping (SageMaker's all-string hyperparameters included). Settings of a newer
        wire schema than this launcher knows are refused, naming the version that knows them."""
        cleaned = {k: _decode_string_value(v) for k, v in values.items() if k not in WIRE_KEYS}
        schema = values.get("launcher_schema")
        if schema is not None:
            try:
                schema = int(_decode_string_value(schema))
            except (TypeError, ValueError):
                raise SpecError(f"{source}: launcher_schema = {schema!r} is not a number. To fix: let launcher write the settings") from None
            if schema > SCHEMA_VERSION:
                from launcher import __version__

                sender = _decode_string_value(values.get("launcher_version")) or "a newer launcher"
                raise SpecError(
                    f"{source}: these settings use launcher schema {schema} (sent by launcher {sender}); this training "
                    f"image has launcher {__version__}, which knows schema {SCHEMA_VERSION}. "
                    f"To fix: install launcher {sender} in the training image (or submit with launcher {__version__})"
                )
        return parse_model(cls, cleaned, source)

    def wire(self) -> dict[str, str]:
        """The settings as the training job receives them: only the values that differ from the
        defaults (so an image one version older accepts any setting it knows), each a string, plus the
        schema version and the sender's version."""
        from launcher import __version__

        out = {"launcher_schema": str(SCHEMA_VERSION), "launcher_version": __version__}
        for key, value in self.model_dump(exclude_defaults=True).items():
            if value is None:
                continue
            out[key] = json.dumps(value) if isinstance(value, list) else str(value).lower() if isinstance(value, bool) else str(value)
        return out

    def to_hyperparameters(self) -> dict[str, str]:
        """SageMaker's ``HyperParameters`` (a map of strings; also what the local backend writes)."""
        return self.wire()

    def to_args(self) -> list[str]:
        """Vertex AI's container/package ``args``: the same settings as ``--key=value``."""
        return [f"--{key}={value}" for key, value in self.wire().items()]


def _check_method(method: str, settings: Hyperparameters) -> None:
    """Settings the method rules out (checked on the spec and again on the entrypoint's config)."""
    if settings.fp8 == "on" and method != "lora":
        raise ValueError(f"fp8: on multiplies a bf16 base in float8; method {method} quantises the base to 4 bits. "
                         "To fix: fp8: off, or method: lora")


def _decode_string_value(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if len(value) >= 2 and value[0] == value[-1] == '"':  # the SageMaker SDKs JSON-encode every value
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, str) and value.lower() in {"none", "null"}:
        return None
    return value


class DataSpec(StrictModel):
    train: str
    eval: str | None = None
    general_eval: str | None = None  # general text for the catastrophic-forgetting check (and general_mix)

    def channels(self) -> dict[str, str]:
        """The data channels the container sees (SageMaker's SM_CHANNEL_<NAME>)."""
        return {name: uri for name, uri in self.model_dump().items() if uri}


_ACCEL = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9_-]*?)\s*(?::\s*(\d+))?\s*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


class Accelerator(StrictModel):
    kind: str
    count: PositiveInt = 1

    @classmethod
    def parse(cls, text: str) -> Accelerator:
        match = _ACCEL.match(text)
        kinds = catalog.load("gpus")["kinds"]
        if not match:
            raise ValueError(f"'{text}' is not KIND[:COUNT], e.g. 'H100:1' or 'A100-80GB:8'")
        kind = catalog.gpu_kind(match.group(1))
        if kind is None:
            raise ValueError(
                f"unknown GPU kind '{match.group(1)}'.{did_you_mean(match.group(1).upper(), kinds)} "
                f"Known kinds: {', '.join(kinds)}"
            )
        return cls(kind=kind, count=int(match.group(2) or 1))

    def __str__(self) -> str:
        return f"{self.kind}:{self.count}"


class ComputeSpec(StrictModel):
    accelerator: Accelerator | None = None  # "H100:1" style; None means the backend's default (CPU locally)
    instance_type: str | None = None  # an explicit SageMaker instance type or Vertex machine type
    spot: bool = False
    max_runtime: int = 24 * 3600  # seconds; accepts "24h", "90m", "2d"
    nodes: PositiveInt = 1

    @field_validator("accelerator", mode="before")
    @classmethod
    def _parse_accelerator(cls, value: Any) -> Any:
        return Accelerator.parse(value) if isinstance(value, str) else value

    @field_validator("max_runtime", mode="before")
    @classmethod
    def _parse_duration(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = _DURATION.match(value)
            if not match:
                raise ValueError(f"'{value}' is not a duration such as '3600', '90m', '24h' or '2d'")
            scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
            return int(float(match.group(1)) * scale)
        return value

    @field_validator("max_runtime")
    @classmethod
    def _positive_runtime(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be positive")
        return value


class LocalSection(StrictModel):
    device: Literal["auto", "cpu", "cuda"] = "auto"


class SageMakerSection(StrictModel):
    # Unset region, role_arn, bucket (and the default prefix): the environment variable, else the profile
    # ('launcher config from-terraform terraform/aws'; launcher/profile.py).
    region: str | None = None  # default: AWS_REGION / AWS_DEFAULT_REGION, else the profile's
    role_arn: str | None = None  # the execution role; default: LAUNCHER_SAGEMAKER_ROLE_ARN, else the profile's
    bucket: str | None = None  # staging, outputs and checkpoints; default: LAUNCHER_SAGEMAKER_BUCKET, else the profile's
    prefix: str = "launcher"  # key prefix in the bucket (this default gives way to the profile's)
    # A custom image in ECR, built from container/Dockerfile.train ('launcher image push train'); None:
    # AWS's PyTorch training image (resolved with sagemaker-core, the sagemaker-images extra) running the
    # source bundle.
    image_uri: str | None = None
    # The image that runs the source bundle in script mode (an AWS deep-learning image URI); None: looked
    # up for the region and instance (LAUNCHER_SAGEMAKER_SCRIPT_IMAGE, else sagemaker-core).
    script_image: str | None = None
    framework_version: str = "2.8.0"
    py_version: str = "py312"
    volume_gb: PositiveInt = 100
    max_wait: int | None = None  # spot: seconds to wait for capacity and restarts in all; default 2 x max_runtime
    max_retries: Annotated[int, Field(ge=0, le=30)] = 0  # RetryStrategy: SageMaker re-runs on internal errors
    hf_token_secret: str | None = None  # a Secrets Manager secret (ARN or name) holding the Hub token
    kms_key_id: str | None = None  # encrypts outputs, checkpoints and the training volume
    network_isolation: bool = False
    subnets: list[str] = []
    security_group_ids: list[str] = []


class VertexSection(StrictModel):
    # Unset project, region, staging_bucket, service_account (and the default prefix): the environment
    # variable, else the profile ('launcher config from-terraform terraform/gcp'; launcher/profile.py).
    project: str | None = None  # default: LAUNCHER_VERTEX_PROJECT, GOOGLE_CLOUD_PROJECT, else the profile's
    region: str | None = None  # default: LAUNCHER_VERTEX_REGION, GOOGLE_CLOUD_REGION, else the profile's
    staging_bucket: str | None = None  # staging, outputs and checkpoints; default: LAUNCHER_VERTEX_BUCKET, else the profile's
    prefix: str = "launcher"  # object prefix in the bucket (this default gives way to the profile's)
    # A custom image in Artifact Registry, built from container/Dockerfile.train ('launcher image push
    # train'); None: a prebuilt PyTorch training image runs the source bundle as a Python package.
    image_uri: str | None = None
    # The prebuilt image that runs the bundle; None: LAUNCHER_VERTEX_EXECUTOR_IMAGE, else Vertex's PyTorch GPU image.
    executor_image: str | None = None
    service_account: str | None = None  # the service account the job runs as; None: the profile's, else the project's default
    network: str | None = None  # projects/NUMBER/global/networks/NAME, for private training
    boot_disk_gb: PositiveInt = 100
    max_wait: int | None = None  # spot: seconds to wait for capacity; None: Vertex's default
    hf_token_secret: str | None = None  # a Secret Manager version (projects/P/secrets/S/versions/latest) holding the Hub token
    kms_key_name: str | None = None  # a Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K) for the job's resources


_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")


class JobSpec(StrictModel):
    """A fine-tuning job, runnable unchanged on the local, SageMaker and Vertex backends."""

    name: str
    base_model: str = "tiny-llama"
    method: Literal["lora", "qlora"] = "lora"
    hf_token_env: str = "HF_TOKEN"
    data: DataSpec
    training: Hyperparameters = Hyperparameters()
    compute: ComputeSpec = ComputeSpec()
    output: str | None = None
    tags: dict[str, str] = {}
    local: LocalSection = LocalSection()
    sagemaker: SageMakerSection = SageMakerSection()
    vertex: VertexSection = VertexSection()

    @model_validator(mode="after")
    def _runnable(self) -> JobSpec:
        _check_method(self.method, self.training)
        if self.training.general_mix > 0 and not self.data.general_eval:
            raise ValueError("training.general_mix > 0 needs general text to draw from. To fix: add data.general_eval, or set general_mix: 0")
        return self

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"'{value}' must be 1-40 lower-case letters, digits or '-', starting and ending with a letter or digit"
            )
        return value

    # --- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> JobSpec:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise NotFoundError(f"job spec '{path}' does not exist. To fix: check the path, or run 'launcher init {path}'")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise SpecError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}). To fix: save it as UTF-8") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise SpecError(f"{where}: not valid YAML ({problem}). To fix: correct the YAML syntax there") from None
        if not isinstance(values, dict):
            raise SpecError(f"{path}: a job spec is a YAML mapping (name:, data:, ...), not {type(values).__name__}. "
                          "To fix: start the file with name: and data: ('launcher init' writes an example)")
        spec = parse_model(cls, values, str(path))
        return spec.resolve_paths(path.parent)

    def resolve_paths(self, base: Path) -> JobSpec:
        """Make relative local data paths, and a relative .gguf base_model (always a local file), relative
        to the spec file's folder."""
        updates = {}
        for key, uri in self.data.channels().items():
            if "://" not in uri and not Path(uri).is_absolute():
                updates[key] = str((base / uri).resolve())
        spec = self.model_copy(update={"data": self.data.model_copy(update=updates)}) if updates else self
        model = Path(self.base_model).expanduser()
        if self.base_model.lower().endswith(".gguf") and "://" not in self.base_model and not model.is_absolute():
            spec = spec.model_copy(update={"base_model": str((base / model).absolute())})
        return spec

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=True), sort_keys=False)

    # --- derived ---------------------------------------------------------------------------------
    def train_config(self) -> TrainConfig:
        return TrainConfig(
            base_model=self.base_model, method=self.method, hf_token_env=self.hf_token_env, **self.training.model_dump()
        )

    def identity(self, backend: str, data: dict[str, str], base_model: str | None = None) -> dict[str, Any]:
        """What defines the job, and so its id: the backend and its own section, the base model
        (``base_model``: its content digest, for a local folder or file), the method, the settings that
        shape the adapter (``TrainConfig.training_settings``), the compute, and the data's content
        (``data``: channel -> digest, ``launcher.data.content_digest``). Not local paths, tags, the
        output location or other backends' sections."""
        settings = self.train_config().training_settings()
        settings["base_model"] = base_model or self.base_model
        section = getattr(self, backend, None)
        return {
            "backend": backend,
            "settings": settings,
            "compute": self.compute.model_dump(mode="json"),
            "data": dict(sorted(data.items())),
            "backend_section": section.model_dump(mode="json") if isinstance(section, BaseModel) else {},
        }

    def job_id(self, identity: dict[str, Any], run_name: str = "run1") -> str:
        """``<name>-<run>-<hash>``, at most 56 characters: the same identity and run name always give the
        same id, so a resubmission after a crash or timeout re-attaches instead of launching (and
        billing) a second job. It leaves room for an attempt suffix (``-a<N>``) inside SageMaker's
        63-character job names, which can never be reused."""
        if not re.match(r"^[a-z0-9][a-z0-9-]{0,11}$", run_name):
            raise SpecError(f"run name '{run_name}' must be 1-12 lower-case letters, digits or '-'. To fix: pass such a --run-name")
        canonical = json.dumps({"identity": identity, "run": run_name}, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:10]
        return f"{self.name[:32].rstrip('-')}-{run_name}-{digest}"


def base_model_digest(base_model: str) -> str | None:
    """A local base model's content, for the job identity (None for a name: tiny-llama, a Hub id, an
    s3:// or gs:// prefix, which are their own identity). Cheap at any size: every file's relative path
    and size, the whole content of files under 1 MiB (configs, small tokenizers) and the first and last
    MiB of larger ones (weights)."""
    path = Path(base_model).expanduser()
    if "://" in base_model or not path.exists():
        return None
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path) if path.is_dir() else file.name}\0{size}\0".encode())
        with file.open("rb") as handle:
            if size <= 1 << 20:
                digest.update(handle.read())
            else:
                digest.update(handle.read(1 << 20))
                handle.seek(-(1 << 20), 2)
                digest.update(handle.read())
    return digest.hexdigest()


# --- error formatting ------------------------------------------------------------------------------
def parse_model(model: type[StrictModel], values: dict[str, Any], source: str):
    """Validate ``values`` into ``model``; on failure raise one SpecError naming the first bad key."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise spec_error(exc, model, source) from None


def spec_error(exc: ValidationError, model: type[BaseModel], source: str) -> SpecError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    # Drop pydantic's union-member tags ('list[str]', "literal['all-linear']") from the location.
    loc = [part for part in first["loc"] if isinstance(part, int) or not re.search(r"[\[\]']", str(part))]
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    if first["type"] == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        hint = did_you_mean(str(loc[-1]), parent.model_fields) if parent else ""
        valid = f" Valid keys: {', '.join(parent.model_fields)}." if parent and not hint else ""
        return SpecError(f"{source}: unknown key '{dotted}'.{hint}{valid} To fix: correct or remove '{dotted}'{more}")
    if first["type"] == "missing":
        return SpecError(f"{source}: missing required key '{dotted}'. To fix: add it{more}")
    message = first["msg"].removeprefix("Value error, ")
    if "To fix:" in message:  # a check across keys says itself what is wrong and how to fix it
        return SpecError(f"{source}: {f'{dotted}: ' if loc else ''}{message}{more}")
    value = first.get("input")
    shown = f" {value!r}" if len(repr(value)) <= 60 else ""
    return SpecError(f"{source}: '{dotted}' ={shown} is not valid: {message}. To fix: change '{dotted}'{more}")


def _model_at(model: type[BaseModel], loc: list) -> type[BaseModel] | None:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        annotation = current.model_fields[part].annotation
        current = _first_model(annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _first_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None
