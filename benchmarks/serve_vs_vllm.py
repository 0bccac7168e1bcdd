"""Our server with the vLLM engine against vLLM's own OpenAI server: the same model, load and engine settings.

    .venv-vllm/bin/python benchmarks/serve_vs_vllm.py --model JOB_DIR/model --clients 8 --requests 200 --max-tokens 32

Two servers, started together and up for the whole run, loaded one at a time: ours (``python -m entrypoints.serve --engine vllm``, with capture on: routing, the chat template,
limits, metrics and one capture record per request) and vLLM's (``python -m vllm.entrypoints.openai.api_server
--enable-lora --lora-modules NAME=MODEL_DIR``, with the engine settings our engine uses on a CPU: eager, a
1 GiB KV cache, the same LoRA rank and number of LoRA slots). Each load round is N concurrent clients
sending a fixed number of OpenAI chat completions for the job's adapter (greedy, ``max_tokens``); rounds
alternate between the servers (``--rounds``, after a warm-up round each) and the median round counts.
It prints JSON: per server requests/s, generated tokens/s, p50/p99 latency, errors, mean prompt and
completion tokens (the same work on both), our capture records (must equal our requests), and the
overhead: how much lower our generated tokens/s is than vLLM's, in percent (the target: at most 10).
Exits 1 when a request failed or a capture record is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.serve_load import PROMPTS, percentile  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(url: str, process: subprocess.Popen, log: Path, began: float, timeout: float = 600) -> float:
    """Seconds from ``began`` (the server's launch) until ``url`` answers 200."""
    while time.monotonic() - began < timeout:
        if process.poll() is not None:
            raise SystemExit(f"Error: a server exited ({process.returncode}); its log: {log}\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return time.monotonic() - began
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"Error: {url} was not healthy in {timeout:g} s; its log: {log}")


def load(url: str, model: str, clients: int, requests: int, max_tokens: int, tag: str) -> dict:
    def one(n: int) -> tuple[float, int, int, str | None]:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": PROMPTS[n % len(PROMPTS)]}],
                           "max_tokens": max_tokens, "temperature": 0}).encode()
        headers = {"Content-Type": "application/json", "X-Amzn-SageMaker-Inference-Id": f"{tag}-{n}"}
        request = urllib.request.Request(url + "/v1/chat/completions", data=body, headers=headers, method="POST")
        began = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=300) as answer:
                usage = json.loads(answer.read())["usage"]
            return time.monotonic() - began, usage["completion_tokens"], usage["prompt_tokens"], None
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            return time.monotonic() - began, 0, 0, f"{type(exc).__name__}: {exc}"

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.monotonic() - began
    ok = [r for r in results if r[3] is None]
    latencies = [r[0] for r in ok]
    tokens = sum(r[1] for r in ok)
    return {
        "wall_s": round(wall, 2), "requests_per_s": round(requests / wall, 2), "generated_tokens_per_s": round(tokens / wall, 1),
        "latency_p50_ms": round(percentile(latencies, 50) * 1000, 1) if latencies else None,
        "latency_p99_ms": round(percentile(latencies, 99) * 1000, 1) if latencies else None,
        "errors": len(results) - len(ok), "first_error": next((r[3] for r in results if r[3]), None),
        "mean_completion_tokens": round(tokens / len(ok), 1) if ok else 0,
        "mean_prompt_tokens": round(sum(r[2] for r in ok) / len(ok), 1) if ok else 0,
    }


def median_round(rounds: list[dict]) -> dict:
    ordered = sorted(rounds, key=lambda r: r["generated_tokens_per_s"])
    middle = dict(ordered[len(ordered) // 2])
    middle["rounds_tokens_per_s"] = [r["generated_tokens_per_s"] for r in rounds]
    middle["errors"] = sum(r["errors"] for r in rounds)
    return middle


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="A job's model dir (a LoRA adapter with its base recorded)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="Requests per round")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="Measured rounds per server (after one warm-up round each)")
    parser.add_argument("--kv-cache-gib", type=int, default=1, help="Both servers' KV cache (VLLM_CPU_KVCACHE_SPACE)")
    args = parser.parse_args()
    model_dir = Path(args.model).resolve()
    if not (model_dir / "adapter_config.json").is_file():
        print(f"Error: {args.model} holds no adapter_config.json. To fix: pass a job's model dir", file=sys.stderr)
        return 2
    if min(args.clients, args.requests, args.max_tokens, args.rounds) < 1:
        print("Error: --clients, --requests, --max-tokens and --rounds must be at least 1", file=sys.stderr)
        return 2

    from entrypoints.engine_vllm import LORA_RANKS, adapter_rank
    from entrypoints.engines import base_of
    from entrypoints.serve import _model_name
    from launcher.capture import read_records

    base, _ = base_of(model_dir)
    name = _model_name(model_dir)
    rank = next(r for r in LORA_RANKS if r >= adapter_rank(str(model_dir)))
    work = Path(tempfile.mkdtemp(prefix="serve-vs-vllm-"))
    capture = work / "capture"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_gib), "PYTHONPATH": str(REPO)}
    ours_port, theirs_port = free_port(), free_port()
    launched = time.monotonic()  # both start at once (their start-up times overlap on the same cores)
    # Our engine on a CPU with adapters holds one more LoRA slot (the base as a zero adapter): so does theirs.
    servers = {
        "ours": (start([sys.executable, "-m", "entrypoints.serve", "--model", str(model_dir), "--engine", "vllm",
                        "--port", str(ours_port), "--capture", str(capture), "--max-concurrency", str(max(64, args.clients)),
                        "--request-timeout", "300"], work / "ours.log", env),
                 f"http://127.0.0.1:{ours_port}", "/ping"),
        "vllm": (start([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", base, "--port", str(theirs_port),
                        "--host", "127.0.0.1", "--enable-lora", "--lora-modules", f"{name}={model_dir}", "--max-lora-rank", str(rank),
                        "--max-loras", "2", "--enforce-eager", "--disable-log-stats"],
                       work / "vllm.log", env),
                 f"http://127.0.0.1:{theirs_port}", "/health"),
    }
    report: dict = {"model": str(model_dir), "base": base, "adapter": name, "clients": args.clients, "requests": args.requests,
                    "max_tokens": args.max_tokens, "rounds": args.rounds, "logs": str(work)}
    try:
        for key, (process, url, health) in servers.items():
            report[f"{key}_start_s"] = round(wait_healthy(url + health, process, work / f"{key}.log", launched), 1)
        tag = uuid.uuid4().hex[:12]
        rounds: dict[str, list[dict]] = {"ours": [], "vllm": []}
        for key, (_, url, _) in servers.items():
            load(url, name, args.clients, min(args.requests, 4 * args.clients), args.max_tokens, f"warm-{key}")
        for index in range(args.rounds):
            for key in (("ours", "vllm") if index % 2 == 0 else ("vllm", "ours")):  # alternate who goes first
                rounds[key].append(load(servers[key][1], name, args.clients, args.requests, args.max_tokens, f"{tag}-{key}-{index}"))
                print(f"round {index + 1} {key}: {rounds[key][-1]['generated_tokens_per_s']} tokens/s", file=sys.stderr, flush=True)
    finally:
        for process, _, _ in servers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # ours flushes its capture on SIGTERM
        for process, _, _ in servers.values():
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
    ours, theirs = median_round(rounds["ours"]), median_round(rounds["vllm"])
    measured = sum(1 for r in read_records(capture) if (r.inference_id or "").startswith(f"{tag}-ours-"))
    report.update({
        "ours": ours, "vllm": theirs,
        "overhead_tokens_per_s_pct": round(100 * (1 - ours["generated_tokens_per_s"] / theirs["generated_tokens_per_s"]), 1),
        "overhead_requests_per_s_pct": round(100 * (1 - ours["requests_per_s"] / theirs["requests_per_s"]), 1),
        "ours_capture_records": measured, "ours_requests": args.requests * args.rounds,
    })
    print(json.dumps(report, indent=2))
    failed = ours["errors"] or theirs["errors"] or measured != args.requests * args.rounds
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
