"""The baseline a window is held against: what the tuned model's traffic looked like when it was judged
good. Written by the training entrypoint at the end of evaluation (the eval prompts and the tuned
model's answers), or by ``launcher monitor baseline --source URI`` from a capture window.

    baseline = build_baseline(pairs, embeddings=True)     # pairs: [(prompt, response), ...]
    baseline.save(folder)                                 # baseline.json (+ baseline-embeddings.npz)
    baseline = Baseline.load(folder or file)

``baseline.json`` holds every descriptor's values (at most ``MAX_ROWS`` records, sampled evenly), the
hallucination rate and unsupported facts per record, the latency percentiles and error rate where the
source carries them, and up to ``MAX_TEXTS`` of the pairs themselves (the report shows them, and they let
embeddings be computed later when the baseline was written without the embedding model, as the training
entrypoint does when the monitor extra is not installed). ``baseline-embeddings.npz`` holds the prompt and
response embeddings (float16) of those pairs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.errors import UserInputError

VERSION = 1
MAX_ROWS = 5000
MAX_TEXTS = 1000
JSON_NAME = "baseline.json"
EMBEDDINGS_NAME = "baseline-embeddings.npz"


@dataclass
class Baseline:
    records: int
    descriptors: dict[str, list[float]]
    hallucination_rate: float
    unsupported_per_record: float
    pairs: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""
    latency_ms: dict[str, float] | None = None
    error_rate: float | None = None
    embeddings: dict[str, Any] | None = None  # {"prompt": array, "response": array}, or None

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "source": self.source, "records": self.records, "descriptors": self.descriptors,
                "hallucination_rate": self.hallucination_rate, "unsupported_per_record": self.unsupported_per_record,
                "latency_ms": self.latency_ms, "error_rate": self.error_rate,
                "pairs": [{"prompt": p, "response": r} for p, r in self.pairs],
                "embeddings": EMBEDDINGS_NAME if self.embeddings is not None else None}

    def save(self, folder: str | Path) -> Path:
        """``baseline.json`` (and the embeddings) into ``folder``, each written whole (temp + rename)."""
        import numpy as np

        from launcher.state import write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.embeddings is not None:
            partial = folder / f".{EMBEDDINGS_NAME}.partial.npz"
            np.savez_compressed(partial, prompt=np.asarray(self.embeddings["prompt"], np.float16),
                                response=np.asarray(self.embeddings["response"], np.float16))
            partial.replace(folder / EMBEDDINGS_NAME)
        write_json(folder / JSON_NAME, self.to_json())
        return folder / JSON_NAME

    @classmethod
    def load(cls, where: str | Path) -> Baseline:
        """From ``baseline.json`` or the folder (a model dir) holding it."""
        path = Path(where)
        if path.is_dir():
            path = path / JSON_NAME
        if not path.is_file():
            raise UserInputError(f"no baseline at {where}. To fix: give the model dir of a finished job (its training writes "
                                 f"{JSON_NAME}), or build one: launcher monitor baseline --source CAPTURE_URI --out DIR")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") != VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {VERSION}")
            embeddings = None
            if data.get("embeddings"):
                import numpy as np

                with np.load(path.parent / data["embeddings"]) as stored:
                    embeddings = {"prompt": stored["prompt"].astype(np.float32), "response": stored["response"].astype(np.float32)}
            return cls(records=int(data["records"]), descriptors={k: list(map(float, v)) for k, v in data["descriptors"].items()},
                       hallucination_rate=float(data["hallucination_rate"]), unsupported_per_record=float(data["unsupported_per_record"]),
                       pairs=[(p["prompt"], p["response"]) for p in data.get("pairs", [])], source=data.get("source", ""),
                       latency_ms=data.get("latency_ms"), error_rate=data.get("error_rate"), embeddings=embeddings)
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise UserInputError(f"{path} is not a baseline this version reads ({exc}). To fix: rebuild it with "
                                 "launcher monitor baseline") from None

    def ensure_embeddings(self, embedder: Any, cache: str | Path | None = None) -> None:
        """Embed the stored pairs when the baseline was written without the embedding model (as training
        writes it), once: the vectors are kept in ``cache`` (a folder), named by the pairs' digest."""
        if self.embeddings is not None or not self.pairs:
            return
        import hashlib

        import numpy as np

        digest = hashlib.sha256(json.dumps(self.pairs).encode()).hexdigest()[:16]
        path = Path(cache) / f"baseline-embeddings-{digest}.npz" if cache else None
        if path is not None and path.is_file():
            with np.load(path) as stored:
                self.embeddings = {"prompt": stored["prompt"].astype(np.float32), "response": stored["response"].astype(np.float32)}
            return
        embedded = embedder.pairs([p for p, _ in self.pairs], [r for _, r in self.pairs])
        self.embeddings = {"prompt": embedded.prompt, "response": embedded.response}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.stem}.partial.npz")
            np.savez_compressed(partial, prompt=embedded.prompt.astype(np.float16), response=embedded.response.astype(np.float16))
            partial.replace(path)


def _even(items: list, limit: int) -> list:
    if len(items) <= limit:
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def build_baseline(pairs: list[tuple[str, str]], *, embeddings: bool = True, source: str = "",
                   finish_reasons: list[str | None] | None = None, latencies_ms: list[float] | None = None,
                   statuses: list[int | None] | None = None, embedder: Any = None) -> Baseline:
    """A baseline from (prompt, response) pairs (and what the capture says about them, when it does)."""
    from monitoring.window import score_pairs

    if not pairs:
        raise UserInputError("the baseline has no records to learn from. To fix: point --source at captured traffic "
                             "(or evaluate the model on its eval set)")
    rows = _even(list(range(len(pairs))), MAX_ROWS)
    chosen = [pairs[i] for i in rows]
    reasons = [finish_reasons[i] for i in rows] if finish_reasons else None
    scored = score_pairs(chosen, finish_reasons=reasons)
    texts = _even(chosen, MAX_TEXTS)
    vectors = None
    if embeddings:
        from monitoring.embed import Embedder

        embedded = (embedder or Embedder.load()).pairs([p for p, _ in texts], [r for _, r in texts])
        vectors = {"prompt": embedded.prompt, "response": embedded.response}
    latency = None
    if latencies_ms:
        import numpy as np

        values = np.asarray([v for v in latencies_ms if v is not None], float)
        if len(values):
            latency = {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99))}
    error_rate = None
    if statuses and any(s is not None for s in statuses):
        known = [s for s in statuses if s is not None]
        error_rate = sum(1 for s in known if not 200 <= s < 300) / len(known)
    return Baseline(records=len(pairs), descriptors=scored.descriptors, hallucination_rate=scored.hallucination_rate,
                    unsupported_per_record=scored.unsupported_per_record, pairs=texts, source=source,
                    latency_ms=latency, error_rate=error_rate, embeddings=vectors)
