"""One window of traffic scored and held against the baseline: the monitor's whole judgement, without
I/O (the poller reads and sends; the benchmark calls this directly).

    result = evaluate_window(baseline, pairs, embeddings=True)
    result.drifted("input"), result.drift["output"]["output.refusal"].p_value
    [g for g in result.scores if g.flagged]                  # Grounding: unsupported spans per record
    result.hallucination                                     # HallucinationTest: rate vs the baseline's

``score_pairs`` is the per-record part (descriptors and grounding: each record is scored once, as it is
read); ``drift_tests`` the per-window part. The window's false-alarm budget ``alpha`` (default 0.01) is
split as ``monitoring.drift`` describes: half per side, and within a side half to the embedding test.
The hallucination rate is tested on its own (a one-sided binomial test against the baseline's rate at
``alpha``, and at least ``HALLUCINATION_MARGIN`` above it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from launcher import facts
from monitoring import descriptors as d
from monitoring.drift import DriftTest, mmd_test, side_tests
from monitoring.grounding import Grounding, ground

DEFAULT_ALPHA = 0.01
HALLUCINATION_MARGIN = 0.05
MIN_BASELINE_RATE = 0.01


@dataclass
class Scored:
    descriptors: dict[str, list[float]]
    scores: list[Grounding]

    @property
    def hallucination_rate(self) -> float:
        return sum(g.flagged for g in self.scores) / len(self.scores) if self.scores else 0.0

    @property
    def unsupported_per_record(self) -> float:
        return sum(len(g.unsupported) for g in self.scores) / len(self.scores) if self.scores else 0.0


@dataclass(frozen=True)
class HallucinationTest:
    rate: float
    baseline_rate: float
    threshold: float
    p_value: float
    breached: bool

    def to_json(self) -> dict[str, Any]:
        return {"rate": round(self.rate, 4), "baseline_rate": round(self.baseline_rate, 4), "threshold": round(self.threshold, 4),
                "p_value": round(self.p_value, 6), "breached": self.breached}


@dataclass
class WindowResult:
    records: int
    drift: dict[str, dict[str, DriftTest]]
    scores: list[Grounding]
    hallucination: HallucinationTest
    descriptors: dict[str, list[float]] = field(default_factory=dict)

    def drifted(self, side: str) -> bool:
        return any(t.drifted for t in self.drift.get(side, {}).values())


def score_pairs(pairs: list[tuple[str, str]], *, finish_reasons: list[str | None] | None = None,
                support: list[list[float]] | None = None) -> Scored:
    """Descriptors and grounding of each (prompt, response)."""
    rows: dict[str, list[float]] = {name: [] for name in d.NAMES}
    scores = []
    for index, (prompt, response) in enumerate(pairs):
        prompt_facts, located = facts.extract(prompt, source=True), facts.located(response)
        row = d.describe(prompt, response, finish_reasons[index] if finish_reasons else None,
                         prompt_facts=prompt_facts, response_facts={f for f, _, _ in located})
        for name, value in row.items():
            rows[name].append(value)
        grounding = ground(prompt, response, prompt_facts=prompt_facts, located=located)
        if support is not None:
            grounding = Grounding(grounding.score, grounding.unsupported, grounding.derived, grounding.facts, support[index])
        scores.append(grounding)
    return Scored(rows, scores)


def hallucination_test(flagged: int, records: int, baseline_rate: float, alpha: float = DEFAULT_ALPHA) -> HallucinationTest:
    from scipy import stats

    rate = flagged / records if records else 0.0
    base = max(baseline_rate, MIN_BASELINE_RATE)
    p_value = float(stats.binomtest(flagged, records, base, alternative="greater").pvalue) if records else 1.0
    threshold = baseline_rate + HALLUCINATION_MARGIN
    return HallucinationTest(rate, baseline_rate, threshold, p_value, p_value <= alpha and rate >= threshold)


def drift_tests(baseline: Any, rows: dict[str, list[float]], embedded: dict[str, Any] | None,
                alpha: float = DEFAULT_ALPHA) -> dict[str, dict[str, DriftTest]]:
    """Both sides' tests. ``embedded``: the window's {"prompt", "response"} vectors, or None (no
    embedding test; the descriptors then get the side's whole budget)."""
    side_alpha = alpha / 2
    with_embeddings = embedded is not None and baseline.embeddings is not None
    described = side_alpha / 2 if with_embeddings else side_alpha
    out = {"input": side_tests(baseline.descriptors, rows, d.INPUT, described, d.BINARY),
           "output": side_tests(baseline.descriptors, rows, d.OUTPUT, described, d.BINARY)}
    if with_embeddings:
        out["input"]["input.embedding"] = mmd_test(baseline.embeddings["prompt"], embedded["prompt"], alpha=side_alpha / 2,
                                                   metric="input.embedding")
        out["output"]["output.embedding"] = mmd_test(baseline.embeddings["response"], embedded["response"], alpha=side_alpha / 2,
                                                     metric="output.embedding", seed=1)
    return out


def evaluate_window(baseline: Any, pairs: list[tuple[str, str]], *, embeddings: bool = True, alpha: float = DEFAULT_ALPHA,
                    finish_reasons: list[str | None] | None = None, embedder: Any = None) -> WindowResult:
    """Score every pair and test the window."""
    embedded = None
    support = None
    if embeddings:
        from monitoring.embed import Embedder

        embedder = embedder or Embedder.load()
        baseline.ensure_embeddings(embedder)
        vectors = embedder.pairs([p for p, _ in pairs], [r for _, r in pairs])
        embedded, support = {"prompt": vectors.prompt, "response": vectors.response}, vectors.support
    scored = score_pairs(pairs, finish_reasons=finish_reasons, support=support)
    flagged = sum(g.flagged for g in scored.scores)
    return WindowResult(len(pairs), drift_tests(baseline, scored.descriptors, embedded, alpha), scored.scores,
                        hallucination_test(flagged, len(pairs), baseline.hallucination_rate, alpha), scored.descriptors)
