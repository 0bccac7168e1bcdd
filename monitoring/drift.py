"""Drift tests of a window against the baseline, the input side and the output side apart.

    tests = side_tests(baseline_rows, window_rows, names, alpha=0.005)   # {metric: DriftTest}
    tests["input.embedding"] = embedding_test(baseline_vecs, window_vecs, alpha=...)

Per descriptor (scipy): a two-sample Kolmogorov-Smirnov test for counts and ratios, Fisher's exact test
for the 0/1 descriptors (empty, truncated, refusal); beside each p-value two distances on the
histograms (baseline deciles as bins): the population stability index and the Jensen-Shannon distance.
Embeddings: the maximum mean discrepancy (RBF kernel, median-distance bandwidth) with a permutation
test (999 permutations: p-values down to 0.001), on at most 500 baseline rows.

**False alarms.** A window tests about ten descriptors and two embeddings; at 5% each it would alarm
most days. The defaults hold the whole window's false-alarm rate to ``alpha`` (0.01): each side gets
half of it (Bonferroni over the two sides), and within a side the embedding test gets half and the
descriptors share the other half by Holm's step-down correction (which controls the family-wise error
rate whatever the tests' dependence). A descriptor also needs a practical effect to count as drifted:
a population stability index of at least 0.1, or for a 0/1 descriptor a rate at least 5 points away
from the baseline's, so a large window does not alarm on a negligible shift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MIN_PSI = 0.1
MIN_RATE_CHANGE = 0.05
PERMUTATIONS = 999
MAX_BASELINE_ROWS = 500


@dataclass(frozen=True)
class DriftTest:
    metric: str
    test: str  # "ks", "fisher", "mmd"
    statistic: float
    p_value: float
    threshold: float  # the corrected significance level the p-value was held to
    drifted: bool
    psi: float | None = None
    js: float | None = None
    baseline_mean: float | None = None
    window_mean: float | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"test": self.test, "statistic": round(self.statistic, 6), "p_value": round(self.p_value, 6),
               "threshold": round(self.threshold, 6), "drifted": self.drifted}
        for key in ("psi", "js", "baseline_mean", "window_mean"):
            value = getattr(self, key)
            if value is not None:
                out[key] = round(value, 6)
        return out


def histogram_distances(baseline: Any, window: Any, binary: bool) -> tuple[float, float]:
    """(PSI, Jensen-Shannon distance) on bins cut at the baseline's deciles (two bins for 0/1)."""
    import numpy as np
    from scipy.spatial.distance import jensenshannon

    if binary:
        edges = np.array([-np.inf, 0.5, np.inf])
    else:
        inner = np.unique(np.quantile(baseline, np.linspace(0.1, 0.9, 9)))
        edges = np.concatenate([[-np.inf], inner, [np.inf]]) if len(inner) else np.array([-np.inf, np.inf])
        if len(edges) == 2:  # a constant baseline: its value against everything else
            value = float(baseline[0])
            edges = np.array([-np.inf, value - 1e-9, value + 1e-9, np.inf])
    eps = 1e-4
    p = np.histogram(baseline, edges)[0] / max(len(baseline), 1) + eps
    q = np.histogram(window, edges)[0] / max(len(window), 1) + eps
    p, q = p / p.sum(), q / q.sum()
    psi = float(np.sum((q - p) * np.log(q / p)))
    return psi, float(jensenshannon(p, q, base=2))


def descriptor_test(metric: str, baseline: Any, window: Any, binary: bool) -> tuple[str, float, float, float, float, bool]:
    """(test, statistic, p-value, psi, js, practically different) for one descriptor."""
    import numpy as np
    from scipy import stats

    baseline, window = np.asarray(baseline, float), np.asarray(window, float)
    psi, js = histogram_distances(baseline, window, binary)
    if binary:
        a, b = int(baseline.sum()), int(window.sum())
        table = [[a, len(baseline) - a], [b, len(window) - b]]
        result = stats.fisher_exact(table)
        p_value = float(result.pvalue)
        effect = abs(b / max(len(window), 1) - a / max(len(baseline), 1)) >= MIN_RATE_CHANGE
        return "fisher", float(b / max(len(window), 1)), p_value, psi, js, effect
    if np.all(baseline == baseline[0]) and np.all(window == baseline[0]):
        return "ks", 0.0, 1.0, psi, js, False
    result = stats.ks_2samp(baseline, window)
    return "ks", float(result.statistic), float(result.pvalue), psi, js, psi >= MIN_PSI


def side_tests(baseline: dict[str, Any], window: dict[str, Any], names: tuple[str, ...], alpha: float,
               binary: frozenset[str]) -> dict[str, DriftTest]:
    """Every descriptor of one side, Holm-corrected at family-wise level ``alpha``."""
    import numpy as np

    raw = {name: descriptor_test(name, baseline[name], window[name], name in binary) for name in names}
    order = sorted(names, key=lambda n: raw[n][2])
    out: dict[str, DriftTest] = {}
    still = True  # Holm: stop rejecting at the first p-value above its step's level
    for rank, name in enumerate(order):
        test, statistic, p_value, psi, js, effect = raw[name]
        level = alpha / (len(order) - rank)
        still = still and p_value <= level
        out[name] = DriftTest(name, test, statistic, p_value, level, still and effect, psi, js,
                              float(np.mean(baseline[name])), float(np.mean(window[name])))
    return {name: out[name] for name in names}


def mmd_test(baseline: Any, window: Any, *, alpha: float, seed: int = 0, metric: str = "embedding") -> DriftTest:
    """Maximum mean discrepancy (RBF, median heuristic) between the two sets of unit vectors, with a
    permutation p-value."""
    import numpy as np
    from sklearn.metrics.pairwise import euclidean_distances

    rng = np.random.default_rng(seed)
    baseline, window = np.asarray(baseline, np.float32), np.asarray(window, np.float32)
    if len(baseline) > MAX_BASELINE_ROWS:
        baseline = baseline[rng.choice(len(baseline), MAX_BASELINE_ROWS, replace=False)]
    pooled = np.concatenate([baseline, window])
    n, m = len(baseline), len(window)
    squared = euclidean_distances(pooled, squared=True)
    upper = squared[np.triu_indices(len(pooled), 1)]
    bandwidth = float(np.median(upper)) or 1.0
    kernel = np.exp(-squared / bandwidth)

    def mmd2(weights: Any) -> Any:  # weights: [N, P] of +1/n (baseline) and -1/m (window) per column
        return np.einsum("ip,ip->p", weights, kernel @ weights)

    observed = np.concatenate([np.full(n, 1 / n), np.full(m, -1 / m)])[:, None]
    labels = np.stack([rng.permutation(n + m) for _ in range(PERMUTATIONS)], axis=1) < n
    permuted = np.where(labels, 1 / n, -1 / m)
    statistic = float(mmd2(observed)[0])
    null = mmd2(permuted)
    p_value = float((1 + np.sum(null >= statistic)) / (PERMUTATIONS + 1))
    return DriftTest(metric, "mmd", statistic, p_value, alpha, p_value <= alpha)
