"""One HTML file per tested window: what drifted, against what, and the responses that state facts their
prompt does not support, with those spans highlighted.

    write_report(folder, endpoint, window, baseline, taken, drift, hallucination, operational, history)
    -> folder/<endpoint>-<window id>.html   (written whole: temp + rename; the same window, the same file)

Plots (matplotlib, embedded as PNG): each descriptor's histogram, baseline against this window; each
metric's drift statistic over the windows so far (the state's history); the hallucination rate over
time against the baseline's. Then the tests as a table and the flagged responses.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any

from monitoring import descriptors as d


def _png(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _histograms(baseline: Any, rows: dict[str, list[float]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axes = plt.subplots(2, 5, figsize=(16, 5.5))
    for axis, name in zip(axes.flat, d.NAMES, strict=False):
        base, now = np.asarray(baseline.descriptors[name], float), np.asarray(rows[name], float)
        bins = np.histogram_bin_edges(np.concatenate([base, now]), bins=12)
        axis.hist(base, bins=bins, density=True, alpha=0.55, label="baseline")
        axis.hist(now, bins=bins, density=True, alpha=0.55, label="window")
        axis.set_title(name, fontsize=9)
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(d.NAMES):]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=8)
    return _png(figure)


def _over_time(history: list[dict[str, Any]], window: dict[str, Any], stats: dict[str, float], rate: float,
               baseline_rate: float) -> str:
    import matplotlib.pyplot as plt

    points = history + [{"id": window["id"], "stats": stats, "hallucination_rate": rate}]
    figure, (left, right) = plt.subplots(1, 2, figsize=(14, 3.5))
    for metric in sorted(stats):
        left.plot([p["stats"].get(metric) for p in points], marker=".", label=metric)
    left.set_title("drift statistic per window (KS D, rate, MMD²)", fontsize=9)
    left.legend(fontsize=6, ncol=2)
    right.plot([p["hallucination_rate"] for p in points], marker=".", label="window")
    right.axhline(baseline_rate, color="grey", linestyle="--", label="baseline")
    right.set_title("hallucination rate per window", fontsize=9)
    right.legend(fontsize=7)
    return _png(figure)


def highlight(text: str, spans: list[str]) -> str:
    """``text`` escaped, each unsupported span wrapped in <mark>."""
    out, at = [], 0
    marks = sorted({(text.find(s), s) for s in spans if s and text.find(s) >= 0})
    for start, span in marks:
        if start < at:
            continue
        out += [html.escape(text[at:start]), f"<mark>{html.escape(span)}</mark>"]
        at = start + len(span)
    out.append(html.escape(text[at:]))
    return "".join(out).replace("\n", "<br>")


def write_report(folder: Path, endpoint: str, window: dict[str, Any], baseline: Any, taken: dict[str, Any], drift: dict,
                 hallucination: Any, operational: dict[str, tuple[float, float]], history: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{endpoint}-{window['id']}.html"
    stats = {m: t.statistic for tests in drift.values() for m, t in tests.items()}
    rows = []
    for side, tests in drift.items():
        for metric, test in tests.items():
            effect = "" if test.psi is None else f"PSI {test.psi:.3f}, JS {test.js:.3f}"
            rows.append(f"<tr class='{'bad' if test.drifted else ''}'><td>{side}</td><td>{html.escape(metric)}</td><td>{test.test}</td>"
                        f"<td>{test.statistic:.4g}</td><td>{test.p_value:.4g}</td><td>{test.threshold:.4g}</td><td>{effect}</td>"
                        f"<td>{'DRIFTED' if test.drifted else 'ok'}</td></tr>")
    flagged = [t for t in taken["texts"] if t]
    cards = "".join(
        f"<div class='card'><div class='id'>{html.escape(t['eventId'])}: unsupported {html.escape(', '.join(t['unsupported']))}"
        f"{' · derived ' + html.escape(', '.join(t['derived'])) if t.get('derived') else ''}</div>"
        f"<div class='prompt'>{html.escape(t['prompt']).replace(chr(10), '<br>')}</div>"
        f"<div class='resp'>{highlight(t['response'], t['unsupported'])}</div></div>" for t in flagged[:50])
    ops = "".join(f"<li>{html.escape(m)}: {v:.4g} (threshold {t:.4g})</li>" for m, (v, t) in operational.items()) or \
        "<li>the capture carries no status or latency</li>"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(endpoint)} window {window['id']}</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;max-width:1400px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}} tr.bad td{{background:#fde2e2}} mark{{background:#ffb3b3}}
.card{{border:1px solid #ddd;margin:8px 0;padding:8px}} .id{{font-size:12px;color:#555}} .prompt{{color:#444;font-size:12px;margin:4px 0}}</style></head>
<body><h1>{html.escape(endpoint)}: window {window['id']}</h1>
<p>{window['records']} records, {html.escape(window['start'])} to {html.escape(window['end'])}; baseline {baseline.records} records
({html.escape(baseline.source or 'training evaluation')}).</p>
<h2>Hallucination</h2><p>{hallucination.rate:.1%} of responses state a fact their prompt does not support (baseline
{hallucination.baseline_rate:.1%}; alert at {hallucination.threshold:.1%} with p ≤ significance; p = {hallucination.p_value:.3g}):
<b>{'ALERT' if hallucination.breached else 'ok'}</b>.</p>
<h2>Operational</h2><ul>{ops}</ul>
<h2>Drift</h2><table><tr><th>side</th><th>metric</th><th>test</th><th>statistic</th><th>p-value</th><th>level</th><th>effect</th><th></th></tr>
{''.join(rows)}</table>
<h2>Descriptors: baseline against this window</h2>{_histograms(baseline, taken['rows'])}
<h2>Over time</h2>{_over_time(history, window, stats, hallucination.rate, hallucination.baseline_rate)}
<h2>Flagged responses ({len(flagged)})</h2>{cards or '<p>none</p>'}
</body></html>"""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(page, encoding="utf-8")
    partial.replace(path)
    return path
