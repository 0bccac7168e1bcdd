"""Where the training job runs, mapped into one typed config.

Three contracts, one ``Platform``:

* **SageMaker**: the ``/opt/ml`` layout. Hyperparameters in ``/opt/ml/input/config/hyperparameters.json``
  (every value a string), data channels in ``SM_CHANNEL_<NAME>`` (``/opt/ml/input/data/<name>``), the
  model in ``SM_MODEL_DIR``, checkpoints in ``/opt/ml/checkpoints`` (synced to S3 by SageMaker), the
  failure reason in ``/opt/ml/output/failure``, hosts in ``SM_HOSTS``/``SM_CURRENT_HOST`` (or
  ``resourceconfig.json``, for an image without the training toolkit) and GPUs in ``SM_NUM_GPUS``.
* **Vertex AI**: ``AIP_MODEL_DIR``, ``AIP_CHECKPOINT_DIR``, ``AIP_TRAINING_DATA_URI`` /
  ``AIP_VALIDATION_DATA_URI`` (wildcards match files, plus ``LAUNCHER_CHANNEL_<NAME>`` for other channels), hyperparameters as
  ``--key=value`` arguments, the cluster in ``CLUSTER_SPEC`` (worker pool 0 is the chief, pool 1 the
  workers) with ``MASTER_ADDR``/``MASTER_PORT``. ``gs://bucket/path`` is read and written through Cloud
  Storage FUSE at ``/gcs/bucket/path``.
* **local**: the SageMaker layout rooted at a folder (``--root DIR``), which is what the local backend
  stages.

Each contract gives a ``World``: the nodes of the job, this node's rank, the processes to start on it
and the rendezvous address. ``World.torchrun_args`` turns it into torchrun's arguments; the entrypoint
starts itself under torchrun with them when the job has more than one process (``entrypoints.train.main``).
This module imports no torch: the launcher's dry runs show the same torchrun command.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.errors import SpecError

CHANNELS = ("train", "eval", "general_eval")
PLATFORM_KEY_PREFIXES = ("sagemaker_", "_")  # hyperparameters the platform adds for itself


PROCS_ENV = "LAUNCHER_NPROC_PER_NODE"  # processes per node the launcher asks for (default: every GPU the platform gives)
DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True)
class World:
    """The job's nodes as the platform describes them (one node unless it says otherwise).
    ``procs_per_node`` None: one process per visible GPU, counted where torch is (the entrypoint)."""

    node_rank: int = 0
    nodes: int = 1
    hosts: tuple[str, ...] = ()
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_MASTER_PORT
    procs_per_node: int | None = None

    def torchrun_args(self, procs_per_node: int) -> list[str]:
        """torchrun's arguments for this node: a standalone rendezvous (a free local port) on one node;
        on several, the static rendezvous at the first host that every node names alike."""
        if self.nodes == 1:
            return ["--standalone", f"--nproc-per-node={procs_per_node}"]
        return [f"--nnodes={self.nodes}", f"--node-rank={self.node_rank}", f"--nproc-per-node={procs_per_node}",
                f"--master-addr={self.master_addr}", f"--master-port={self.master_port}"]


def _procs(env: dict[str, str], platform_gpus: str | None = None) -> int | None:
    """Processes per node: the launcher's LAUNCHER_NPROC_PER_NODE, else the platform's GPU count."""
    for value, name in ((env.get(PROCS_ENV), PROCS_ENV), (platform_gpus, "SM_NUM_GPUS")):
        if value:
            try:
                count = int(value)
            except ValueError:
                raise SpecError(f"{name}={value!r} is not a number of processes. To fix: set it to a positive integer") from None
            if count < 1:
                raise SpecError(f"{name}={count}: a node needs at least one process. To fix: set it to 1 or more")
            return count
    return None


@dataclass(frozen=True)
class Platform:
    kind: str  # "sagemaker" | "vertex" | "local"
    hyperparameters: dict[str, Any]
    channels: dict[str, Path]
    model_dir: Path
    checkpoint_dir: Path
    output_dir: Path
    failure_file: Path | None = None
    job_name: str = ""
    world: World = field(default_factory=World)


def detect(argv: list[str] | None = None, env: dict[str, str] | None = None) -> Platform:
    """Read the platform from the command line and environment."""
    env = dict(os.environ if env is None else env)
    args, flags = _parse_args(list(argv or []))
    if "root" in args:
        return _sagemaker(Path(args["root"]), env, flags, kind="local")
    if "AIP_MODEL_DIR" in env:
        return _vertex(env, flags)
    if "SM_MODEL_DIR" in env or "TRAINING_JOB_NAME" in env or Path("/opt/ml/input/config").is_dir():
        # SAGEMAKER_BASE_DIR: the training toolkit's own override of /opt/ml (its tests, and ours, use it).
        root = env.get("SM_ROOT") or env.get("SAGEMAKER_BASE_DIR") or "/opt/ml"
        return _sagemaker(Path(root), env, flags, kind="sagemaker")
    raise SpecError(
        "no training platform found: not SageMaker (/opt/ml, SM_MODEL_DIR), not Vertex AI (AIP_MODEL_DIR). "
        "To fix: run locally with 'python -m entrypoints.train --root JOBDIR'"
    )


def _parse_args(argv: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """``--root DIR`` is ours; every other ``--key=value`` (or ``--key value``) is a hyperparameter."""
    values: dict[str, str] = {}
    if argv[:1] == ["train"]:  # SageMaker starts training containers as `docker run IMAGE train`
        argv = argv[1:]
    index = 0
    while index < len(argv):
        arg = argv[index]
        if not arg.startswith("--"):
            raise SpecError(f"unexpected argument '{arg}'. To fix: pass hyperparameters as --key=value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if index + 1 >= len(argv):
                raise SpecError(f"argument '--{key}' has no value. To fix: --{key}=VALUE")
            index += 1
            value = argv[index]
        values[key.replace("-", "_")] = value
        index += 1
    root = {"root": values.pop("root")} if "root" in values else {}
    return root, values


def _sagemaker(root: Path, env: dict[str, str], flags: dict[str, str], kind: str) -> Platform:
    config = root / "input" / "config"
    hp_file = config / "hyperparameters.json"
    hyperparameters: dict[str, Any] = {}
    if hp_file.is_file():
        try:
            hyperparameters = json.loads(hp_file.read_text())
        except json.JSONDecodeError as exc:
            raise SpecError(f"{hp_file}: not valid JSON ({exc.msg}). To fix: write a JSON object of strings") from None
    if kind == "sagemaker":
        # The training toolkit also passes every hyperparameter as --key value, after json.loads and
        # str() (a list arrives as "['q_proj']"): the file SageMaker wrote is the one to trust.
        hyperparameters = {**flags, **hyperparameters}
    else:
        hyperparameters.update(flags)
    # SageMaker and its SDKs add their own keys (sagemaker_program, sagemaker_submit_directory,
    # sagemaker_region, _tuning_objective_metric, ...): they are the platform's, not the job's.
    hyperparameters = {k: v for k, v in hyperparameters.items() if not k.startswith(PLATFORM_KEY_PREFIXES)}
    use_env = kind == "sagemaker"
    data_root = root / "input" / "data"
    channels: dict[str, Path] = {}
    if data_root.is_dir():
        channels = {p.name: p for p in sorted(data_root.iterdir()) if p.is_dir()}
    if use_env:
        for key, value in env.items():
            if key.startswith("SM_CHANNEL_"):
                channels[key.removeprefix("SM_CHANNEL_").lower()] = Path(value)
    hosts: tuple[str, ...] = ()
    current = env.get("SM_CURRENT_HOST", "")
    if use_env and "SM_HOSTS" in env:
        hosts = tuple(json.loads(env["SM_HOSTS"]))
    elif use_env and (config / "resourceconfig.json").is_file():  # a custom image without the training toolkit
        resources = json.loads((config / "resourceconfig.json").read_text())
        hosts, current = tuple(resources.get("hosts", ())), resources.get("current_host", current)
    world = World(
        node_rank=hosts.index(current) if current in hosts else 0,
        nodes=max(1, len(hosts)),
        hosts=hosts,
        master_addr=hosts[0] if hosts else "127.0.0.1",
        master_port=int(env.get("MASTER_PORT") or DEFAULT_MASTER_PORT),
        # SageMaker gives every GPU of the instance; the local backend names its --gpus.
        procs_per_node=_procs(env, env.get("SM_NUM_GPUS") if use_env else None),
    )
    return Platform(
        kind=kind,
        hyperparameters=hyperparameters,
        channels=channels,
        model_dir=Path(env["SM_MODEL_DIR"]) if use_env and "SM_MODEL_DIR" in env else root / "model",
        checkpoint_dir=Path(env.get("LAUNCHER_CHECKPOINT_DIR", root / "checkpoints")),
        output_dir=Path(env["SM_OUTPUT_DATA_DIR"]) if use_env and "SM_OUTPUT_DATA_DIR" in env else root / "output" / "data",
        failure_file=root / "output" / "failure",
        job_name=env.get("TRAINING_JOB_NAME", root.name if kind == "local" else ""),
        world=world,
    )


def gcs_path(uri: str, env: dict[str, str] | None = None) -> Path:
    """``gs://bucket/path`` -> ``/gcs/bucket/path`` (Cloud Storage FUSE, mounted on Vertex AI)."""
    env = os.environ if env is None else env
    mount = Path(env.get("LAUNCHER_GCS_MOUNT", "/gcs"))
    if uri.startswith("gs://"):
        return mount / uri.removeprefix("gs://")
    if uri.startswith("/gcs/"):
        return mount / uri.removeprefix("/gcs/")
    return Path(uri)


def _vertex(env: dict[str, str], flags: dict[str, str]) -> Platform:
    channels: dict[str, Path] = {}
    for name, var in (("train", "AIP_TRAINING_DATA_URI"), ("eval", "AIP_VALIDATION_DATA_URI")):
        if env.get(var):
            channels[name] = _data_path(env[var], env)
    for key, value in env.items():
        if key.startswith("LAUNCHER_CHANNEL_") and value:
            channels[key.removeprefix("LAUNCHER_CHANNEL_").lower()] = _data_path(value, env)
    model_dir = gcs_path(env["AIP_MODEL_DIR"], env)
    checkpoint_dir = gcs_path(env.get("AIP_CHECKPOINT_DIR") or env["AIP_MODEL_DIR"].rstrip("/") + "/../checkpoints", env)
    world = World(procs_per_node=_procs(env))
    if env.get("CLUSTER_SPEC"):
        # Pools in order (workerpool0 is the chief), replicas in order: the chief is node 0. Vertex's
        # PyTorch images also set MASTER_ADDR/MASTER_PORT (and WORLD_SIZE/RANK counting nodes, which
        # torchrun's own per-process ones replace); CLUSTER_SPEC's chief address is the fallback.
        spec = json.loads(env["CLUSTER_SPEC"])
        pools = spec.get("cluster", {})
        hosts = tuple(h for pool in sorted(pools) for h in pools[pool])
        task = spec.get("task", {})
        pool_names = sorted(pools)
        offset = sum(len(pools[p]) for p in pool_names[: pool_names.index(task["type"])]) if task.get("type") in pools else 0
        chief, _, chief_port = (hosts[0] if hosts else "127.0.0.1").partition(":")
        world = World(
            node_rank=offset + int(task.get("index", 0)),
            nodes=max(1, len(hosts)),
            hosts=hosts,
            master_addr=env.get("MASTER_ADDR") or chief,
            master_port=int(env.get("MASTER_PORT") or chief_port or DEFAULT_MASTER_PORT),
            procs_per_node=world.procs_per_node,
        )
    return Platform(
        kind="vertex",
        hyperparameters=dict(flags),
        channels=channels,
        model_dir=model_dir,
        checkpoint_dir=checkpoint_dir.resolve() if checkpoint_dir.is_absolute() else checkpoint_dir,
        output_dir=model_dir.parent / "output",
        failure_file=None,
        job_name=env.get("CLOUD_ML_JOB_ID", ""),
        world=world,
    )


def _data_path(uri: str, env: dict[str, str]) -> Path:
    # Vertex hands managed datasets as wildcards ("gs://b/export/training-*"): the pattern is kept, and
    # only the files it matches are read (training, validation and test exports share one folder).
    return gcs_path(uri, env)
