"""Our monitor's measured quality and speed (issue 15), side by side with Evidently's, on the data
benchmarks/monitor_data.py wrote.

    .venv/bin/python benchmarks/monitor_data.py --out /tmp/monitor-data
    .venv-evidently/bin/python benchmarks/evidently_side.py --data /tmp/monitor-data --out /tmp/evidently.json
    .venv/bin/python benchmarks/monitor_quality.py --data /tmp/monitor-data --evidently /tmp/evidently.json \\
        --out benchmarks/results/monitor-quality.json

What it measures, through the monitor's own entry points (``monitoring.baseline.build_baseline`` on the
data's baseline records, ``monitoring.window.evaluate_window`` per window, both with and without
embeddings), reading every record with ``launcher.capture.read_records``:

- **hallucination**: the labelled set, in windows of the data's window size. Per item, flagged = any
  unsupported span. Precision and recall over the items with planted errors (``label`` hallucinated);
  the false-flag rate of the derived-only items (the issue's "derived numbers not flagged") and of the
  clean ones; and per planted kind, the share of planted spans found among the unsupported spans, and
  of derived numbers reported as derived.
- **drift**: per window, drifted or not per side (``result.drifted(side)``); the false-alarm rate over the
  no-drift windows (either side drifted), detection per scenario in the first window after the shift (a
  side that truly changed drifted), pre-shift alarms. The same aggregation as the Evidently side
  (``evidently_side.aggregate``), so the figures are comparable.
- **throughput**: records/s of ``evaluate_window`` over the no-drift windows (records / seconds), with
  and without embeddings; the baseline build is timed apart.

``--embed-none-limit N`` runs the embedding variant on only the first N no-drift windows (all scenario
windows still): on two CPU cores MiniLM is the slow part. Prints a table (ours beside Evidently's, when
``--evidently`` names its JSON) and the JSON summary; ``--out`` writes it.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from launcher import capture  # noqa: E402

try:  # the monitor itself (issue 15); without it this script says so and stops
    from monitoring.baseline import build_baseline
    from monitoring.window import evaluate_window
except ImportError as exc:  # pragma: no cover - depends on the checkout
    build_baseline = evaluate_window = None
    _MISSING = exc
else:
    _MISSING = None

SIDES = ("input", "output")


def read(path: Path) -> tuple[list[tuple[str, str]], list[str | None]]:
    """(prompt, response) pairs and finish reasons of a capture file, through launcher.capture."""
    pairs, reasons = [], []
    for rec in capture.read_records(path):
        request, response = rec.input_json(), rec.output_json()
        prompt = [m["content"] for m in request["messages"] if m["role"] == "user"][-1]
        choice = response["choices"][0]
        pairs.append((prompt, choice["message"]["content"]))
        reasons.append(choice.get("finish_reason"))
    return pairs, reasons


def _evaluate(baseline, pairs, reasons, embeddings: bool, embedder=None):
    """evaluate_window with the optional keywords the monitor accepts (finish reasons, a loaded embedder)."""
    accepted = inspect.signature(evaluate_window).parameters
    kwargs = {"embeddings": embeddings}
    if "finish_reasons" in accepted:
        kwargs["finish_reasons"] = reasons
    if embedder is not None and "embedder" in accepted:
        kwargs["embedder"] = embedder
    return evaluate_window(baseline, pairs, **kwargs)


# --- hallucination ---------------------------------------------------------------------------------------
def _spans_match(text: str, spans: list[str]) -> bool:
    return any(text in s or s in text for s in spans if s)


def hallucination(data: Path, manifest: dict, baseline, size: int) -> dict:
    labels = [json.loads(line) for line in (data / manifest["hallucination"]["labels"]).read_text().splitlines() if line.strip()]
    pairs, reasons = read(data / manifest["hallucination"]["file"])
    assert [p[1] for p in pairs] == [lab["response"] for lab in labels], "labels and capture records disagree"
    scores = []
    started = time.perf_counter()
    for at in range(0, len(pairs), size):
        scores += _evaluate(baseline, pairs[at:at + size], reasons[at:at + size], embeddings=False).scores
    elapsed = time.perf_counter() - started
    flagged = [g.flagged for g in scores]
    by = {k: [i for i, lab in enumerate(labels) if lab["label"] == k] for k in ("hallucinated", "derived", "clean")}
    tp = sum(flagged[i] for i in by["hallucinated"])
    fp = sum(flagged[i] for i in by["derived"] + by["clean"])
    kinds: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        for p in lab["planted"]:
            kinds.setdefault(p["kind"], []).append(_spans_match(p["text"], scores[i].unsupported))
    derived = [_spans_match(d["text"], scores[i].derived) for i, lab in enumerate(labels) for d in lab["derived"]]
    derived_flagged = [_spans_match(d["text"], scores[i].unsupported) for i, lab in enumerate(labels) for d in lab["derived"]]
    examples = [{"label": labels[i]["label"], "planted": [p["text"] for p in labels[i]["planted"]],
                 "derived": [d["text"] for d in labels[i]["derived"]], "unsupported": scores[i].unsupported}
                for i in range(len(labels)) if flagged[i] != (labels[i]["label"] == "hallucinated")][:10]
    return {
        "items": len(labels), "by_label": {k: len(v) for k, v in by.items()},
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / len(by["hallucinated"]) if by["hallucinated"] else None,
        "derived_false_flag_rate": sum(flagged[i] for i in by["derived"]) / len(by["derived"]) if by["derived"] else None,
        "clean_false_flag_rate": sum(flagged[i] for i in by["clean"]) / len(by["clean"]) if by["clean"] else None,
        "planted_span_recall_by_kind": {k: sum(v) / len(v) for k, v in sorted(kinds.items())},
        "derived_reported_as_derived": sum(derived) / len(derived) if derived else None,
        "derived_spans_flagged": sum(derived_flagged) / len(derived_flagged) if derived_flagged else None,
        "records_per_s": len(pairs) / elapsed,
        "misjudged_examples": examples,
    }


# --- drift -----------------------------------------------------------------------------------------------
def drift(data: Path, manifest: dict, baselines: dict, variants: list[str], none_limit: int | None,
          embed_none_limit: int | None, embedder) -> tuple[dict, dict]:
    from evidently_side import aggregate, windows  # the same window list and aggregation as Evidently's side

    todo = windows(manifest, none_limit)
    embed_none = {w["id"] for w in [w for w in todo if w["kind"] == "none"][:embed_none_limit]}
    rows = []
    throughput: dict[str, list[tuple[int, float]]] = {v: [] for v in variants}
    for n, w in enumerate(todo):
        pairs, reasons = read(data / w["file"])
        row = {k: w[k] for k in ("id", "scenario", "kind", "drifted", "sides")}
        row.update({k: w[k] for k in ("replicate", "position", "first_after_shift", "expected") if k in w})
        row["time_s"] = {}
        for variant in variants:
            embeddings = variant == "ours+embeddings"
            if embeddings and w["kind"] == "none" and w["id"] not in embed_none:
                continue
            started = time.perf_counter()
            result = _evaluate(baselines[variant], pairs, reasons, embeddings, embedder if embeddings else None)
            elapsed = time.perf_counter() - started
            row["time_s"][variant] = elapsed
            row[variant] = {side: {"drifted": bool(result.drifted(side)),
                                   "tests": {m: {"statistic": t.statistic, "p_value": t.p_value, "threshold": t.threshold,
                                                 "drifted": bool(t.drifted)} for m, t in result.drift.get(side, {}).items()}}
                            for side in SIDES}
            if w["kind"] == "none":
                throughput[variant].append((len(pairs), elapsed))
        rows.append(row)
        if n % 20 == 0 or n == len(todo) - 1:
            flags = " ".join(f"{v}={'/'.join('D' if row[v][s]['drifted'] else '-' for s in SIDES)}" for v in variants if v in row)
            print(f"[{n + 1}/{len(todo)}] {w['id']} truth={'drift' if w['drifted'] else 'none'} {flags}", file=sys.stderr)
    speed = {v: {"windows": len(t), "records": sum(r for r, _ in t), "seconds": sum(s for _, s in t),
                 "records_per_s": sum(r for r, _ in t) / sum(s for _, s in t) if t else None,
                 "median_window_s": statistics.median(s for _, s in t) if t else None} for v, t in throughput.items()}
    return {v: aggregate(rows, v) for v in variants}, speed


# --- the side-by-side table ------------------------------------------------------------------------------
def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def table(ours: dict, evidently: dict | None) -> str:
    columns = [(v, ours["drift"][v]) for v in ours["drift"]]
    if evidently:
        columns += [(f"evidently {c}", agg) for c, agg in evidently["checks"].items()]
    scenarios = list(dict.fromkeys(s for _, agg in columns for s in agg["scenarios"]))
    head = ["", *(name for name, _ in columns)]
    lines = [head, ["false alarms (no-drift windows)", *(f"{_pct(a['false_alarm_rate'])} of {a['no_drift_windows']}" for _, a in columns)]]
    for s in scenarios:
        cells = []
        for _, a in columns:
            sc = a["scenarios"].get(s)
            cells.append("-" if not sc else f"{sc['caught_first_window']}/{sc['replicates']}")
        lines.append([f"{s}: caught in first window", *cells])
    lines.append(["seconds per window (median)", *(f"{a['seconds_per_window']['median']:.2f}" if a["seconds_per_window"]["median"]
                                                   is not None else "-" for _, a in columns)])
    widths = [max(len(str(r[i])) for r in lines) for i in range(len(head))]
    out = [" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in lines]
    out.insert(1, "-+-".join("-" * w for w in widths))
    h = ours.get("hallucination")
    if h:
        out += ["", f"hallucination (ours; Evidently has no judge-free grounding): precision {_pct(h['precision'])}, "
                    f"recall {_pct(h['recall'])}, derived-only flagged {_pct(h['derived_false_flag_rate'])}, "
                    f"clean flagged {_pct(h['clean_false_flag_rate'])} ({h['items']} items)"]
    for v, s in ours.get("throughput", {}).items():
        if s["records_per_s"]:
            out.append(f"throughput {v}: {s['records_per_s']:.0f} records/s over {s['windows']} no-drift windows")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder written by benchmarks/monitor_data.py")
    parser.add_argument("--evidently", type=Path, help="benchmarks/evidently_side.py's JSON, printed beside ours")
    parser.add_argument("--out", type=Path, help="write the JSON summary here")
    parser.add_argument("--none-limit", type=int, help="use only the first N no-drift windows")
    parser.add_argument("--embed-none-limit", type=int, help="the embedding variant on only the first N no-drift windows")
    parser.add_argument("--no-embeddings", action="store_true", help="skip the embedding variant")
    args = parser.parse_args(argv)
    if _MISSING is not None:
        print(f"Error: the monitor is not in this checkout ({_MISSING}). To fix: run from a checkout with "
              "monitoring.baseline and monitoring.window (issue 15)", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    manifest = json.loads((args.data / "manifest.json").read_text())
    size = manifest["window_size"]
    base_pairs, base_reasons = read(args.data / manifest["baseline"]["file"])
    variants = ["ours"] + ([] if args.no_embeddings else ["ours+embeddings"])
    summary: dict = {"tool": "launcher monitoring", "data": str(args.data), "seed": manifest["seed"], "window_size": size,
                     "baseline_records": len(base_pairs), "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                     "started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "baseline_build_s": {}}
    baselines, embedder = {}, None
    for variant in variants:
        embeddings = variant == "ours+embeddings"
        kwargs = {"embeddings": embeddings}
        if "finish_reasons" in inspect.signature(build_baseline).parameters:
            kwargs["finish_reasons"] = base_reasons
        if embeddings:
            from monitoring.embed import Embedder

            embedder = Embedder.load()
            if "embedder" in inspect.signature(build_baseline).parameters:
                kwargs["embedder"] = embedder
        started = time.perf_counter()
        baselines[variant] = build_baseline(base_pairs, **kwargs)
        summary["baseline_build_s"][variant] = time.perf_counter() - started
    summary["hallucination"] = hallucination(args.data, manifest, baselines["ours"], size)
    summary["drift"], summary["throughput"] = drift(args.data, manifest, baselines, variants, args.none_limit,
                                                    args.embed_none_limit, embedder)
    evidently = json.loads(args.evidently.read_text()) if args.evidently else None
    if evidently:
        summary["evidently"] = {"file": str(args.evidently), "checks": evidently["checks"]}
    print(table(summary, evidently), file=sys.stderr)
    text = json.dumps(summary, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
