"""Load on a local endpoint: N concurrent clients, a fixed number of chat requests, latency and throughput.

    python benchmarks/serve_load.py --model JOB_DIR/model --clients 8 --requests 200 --max-tokens 32
    python benchmarks/serve_load.py --endpoint NAME ...      # an endpoint already deployed from this home

With ``--model`` it deploys a temporary local endpoint (``launcher.api.deploy``, its own LAUNCHER_HOME
unless one is set), runs the load, undeploys it (which flushes the capture) and counts the capture
records this run left (by inference id). Each request is an OpenAI chat completion with a distinct
``X-Amzn-SageMaker-Inference-Id``. It prints JSON: p50/p99 latency, requests/s, generated tokens/s,
errors (must be 0) and capture records (must equal requests), and exits 1 when either check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    "Client Alice Moreno, age 41, risk moderate, cash $12,000. Write the summary.",
    "Client Bob Chen, age 67, risk conservative, cash $80,000. Write the summary.",
    "Client Carol Singh, age 29, risk aggressive, cash $3,000. Write the summary.",
    "Client Dan Okafor, age 55, risk moderate, cash $45,000. Write the summary.",
]


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", help="A model dir to deploy for the run")
    where.add_argument("--endpoint", help="A local endpoint already deployed")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="The server's torch threads")
    args = parser.parse_args()

    from launcher import api
    from launcher.capture import read_records

    os.environ.setdefault("LAUNCHER_HOME", tempfile.mkdtemp(prefix="serve-load-"))
    started_deploy = time.monotonic()
    if args.model:
        options = {"threads": args.threads} if args.threads else {}
        endpoint = api.deploy(args.model, name="serve-load", **options)
    else:
        endpoint = next((e for e in api.endpoints() if e.name == args.endpoint), None)
        if endpoint is None or endpoint.state != "InService":
            print(f"Error: no endpoint '{args.endpoint}' in service here. To fix: launcher endpoints", file=sys.stderr)
            return 2
    deploy_s = time.monotonic() - started_deploy
    key = os.environ.get("LAUNCHER_API_KEY")
    tag = uuid.uuid4().hex[:12]

    def one(n: int) -> tuple[float, int, str | None]:
        body = json.dumps({"messages": [{"role": "user", "content": PROMPTS[n % len(PROMPTS)]}], "max_tokens": args.max_tokens}).encode()
        headers = {"Content-Type": "application/json", "X-Amzn-SageMaker-Inference-Id": f"{tag}-{n}"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(endpoint.url + "/v1/chat/completions", data=body, headers=headers, method="POST")
        began = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=300) as answer:
                tokens = json.loads(answer.read())["usage"]["completion_tokens"]
            return time.monotonic() - began, tokens, None
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            return time.monotonic() - began, 0, f"{type(exc).__name__}: {exc}"

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.clients) as pool:
        results = list(pool.map(one, range(args.requests)))
    wall = time.monotonic() - began
    errors = [e for _, _, e in results if e]
    latencies = [t for t, _, e in results if not e]
    tokens = sum(n for _, n, _ in results)
    if args.model:
        api.undeploy(endpoint.name)  # flushes the capture
    else:
        time.sleep(12)  # the server's capture timer (10 s) writes the rest
    captured = sum(1 for r in read_records(endpoint.capture) if (r.inference_id or "").startswith(tag + "-"))
    report = {
        "clients": args.clients, "requests": args.requests, "max_tokens": args.max_tokens, "deploy_s": round(deploy_s, 1),
        "wall_s": round(wall, 2), "requests_per_s": round(args.requests / wall, 2), "generated_tokens_per_s": round(tokens / wall, 1),
        "latency_p50_ms": round(percentile(latencies, 50) * 1000, 1) if latencies else None,
        "latency_p99_ms": round(percentile(latencies, 99) * 1000, 1) if latencies else None,
        "latency_mean_ms": round(statistics.mean(latencies) * 1000, 1) if latencies else None,
        "generated_tokens": tokens, "errors": len(errors), "capture_records": captured,
    }
    print(json.dumps(report, indent=2))
    if errors:
        print(f"first error: {errors[0]}", file=sys.stderr)
    return 0 if not errors and captured == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
