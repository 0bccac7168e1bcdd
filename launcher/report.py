"""Reading a finished job's model dir, and turning it into an HTML report and a reviewers' CSV.

A model dir holds ``metrics.json`` (schema 1, written by ``entrypoints.train``) and ``samples.jsonl``
(the side-by-side base/tuned answers). ``launcher report`` renders both into ONE self-contained HTML
file: the loss curve is a PNG drawn with matplotlib's Agg backend and inlined as base64, every string
from the model is HTML-escaped, so the file can be mailed or attached to a ticket as is.

Human review round-trips through a CSV that opens in any spreadsheet: ``export_review`` writes the
samples with empty rating columns; ``import_review`` checks every row (all problems listed with the
row number a spreadsheet shows, nothing written on any problem) and folds the ratings into
``metrics.json`` under ``human_review``, replacing an earlier import. matplotlib is imported lazily.

Metrics files from older runs lack some quality keys (fact precision and recall came later): every key of
QUALITY_KEYS still gets a row, showing "n/a" for what the run did not measure.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from launcher import facts
from launcher.state import write_text
from launcher.errors import DataError, NotFoundError, UserInputError

QUALITY_KEYS = ("rouge1", "rouge2", "rougeL", "bleu", "chrf", "fact_precision", "fact_recall")
QUALITY_NOTE = ("fact_precision: share of an answer's numbers, dates, names and citations that its prompt or reference "
                "backs; fact_recall: share of the reference's facts the answer kept.")
CRITERIA = ("factual_accuracy", "tone", "guideline_adherence")
REVIEW_COLUMNS = ("id", "source", "prompt", "reference", "answer", *CRITERIA, "comment")
MAX_LISTED_ERRORS = 20


@dataclass
class ModelDir:
    """A finished job's outputs."""

    path: Path
    job_id: str
    metrics: dict[str, Any]

    @property
    def samples_path(self) -> Path:
        return self.path / "samples.jsonl"

    def samples(self) -> list[dict[str, Any]]:
        if not self.samples_path.is_file():
            return []
        with self.samples_path.open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]


def resolve_model_dir(job: str) -> ModelDir:
    """A model dir, a job dir, or a job id on any backend (its model dir fetched to a local folder:
    ``JobHandle.artifacts``, which downloads and unpacks a remote one)."""
    path = Path(job).expanduser()
    job_id = None
    if path.is_dir():
        candidates = [path, path / "model"]
    elif "/" not in job:
        from launcher.api import attach

        try:
            handle = attach(job)
        except NotFoundError:
            raise NotFoundError(
                f"'{job}' is neither a job id launcher knows nor a model folder. "
                "To fix: pass a job id from 'launcher list' or the path of a model dir"
            ) from None
        job_id, candidates = job, [handle.artifacts()]
    else:
        raise NotFoundError(f"'{job}' is not a folder. To fix: pass a job id from 'launcher list' or the path of a model dir")
    for folder in candidates:
        metrics = folder / "metrics.json"
        if metrics.is_file():
            try:
                data = json.loads(metrics.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise UserInputError(f"{metrics}: not valid JSON ({exc.msg}). To fix: re-run the job or restore the file") from None
            return ModelDir(folder, job_id or folder.resolve().parent.name, data)
    raise NotFoundError(
        f"no metrics.json in {candidates[-1]}: the job has not finished (or failed). "
        f"To fix: check it with 'launcher status {job}' and wait until it has SUCCEEDED"
    )


write_atomic = write_text  # kept for callers of this module



# --- metrics as rows (shared by the HTML report and the terminal table) ----------------------------
def quality_rows(metrics: dict[str, Any]) -> list[tuple[str, float | None, float | None, float | None]]:
    """``(metric, base, tuned, improvement %)`` for every quality key (None where the run did not measure
    it); empty when the job scored nothing."""
    quality = metrics.get("quality") or {}
    base, tuned, gain = quality.get("base") or {}, quality.get("tuned") or {}, quality.get("improvement_pct") or {}
    if not base and not tuned:
        return []
    return [(key, base.get(key), tuned.get(key), gain.get(key)) for key in QUALITY_KEYS]


def unmeasured(metrics: dict[str, Any]) -> list[str]:
    """The quality keys a scored job's metrics lack (written by an older launcher)."""
    return [key for key, base, tuned, _ in quality_rows(metrics) if base is None and tuned is None]


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{suffix}"


def fmt_change(value: float | None, base: float | None = 0.0) -> str:
    """A change in %; None is "n/a (base 0)" when the base scored 0, "n/a" when it was not measured.
    Every base-vs-tuned change is shown this way (the training summary, the report, the terminal
    table), with the base and tuned values in the columns beside it."""
    if value is None:
        return "n/a" if base is None else "n/a (base 0)"
    return f"{value:+,.1f}%"


def eval_loss_row(metrics: dict[str, Any]) -> tuple[float, float | None, float | None] | None:
    """``(base, tuned, change %)`` of the eval loss (lower is better: a fall is negative), or None
    when the job had no eval set."""
    evals = metrics.get("eval") or {}
    base, tuned = evals.get("loss_base"), evals.get("loss_tuned")
    if base is None:
        return None
    change = 100.0 * (tuned - base) / base if tuned is not None and base else None
    return base, tuned, change


def sample_facts(sample: dict[str, Any], side: str) -> tuple[facts.FactCounts, set[facts.Fact]]:
    """One sample answer's fact counts and the facts neither its prompt nor its reference backs."""
    prompt = "\n".join(str(t.get("content", "")) for t in sample.get("prompt", []))
    answer, reference = str(sample.get(side, "")), str(sample.get("reference", ""))
    return facts.score(answer, reference, prompt), facts.unsupported(answer, prompt, reference)


def fact_text(fact: facts.Fact) -> str:
    return f"{fact.value} {fact.unit}" if fact.unit else fact.value


# --- HTML report ------------------------------------------------------------------------------------
def loss_curve_png(metrics: dict[str, Any]) -> bytes | None:
    """The training loss (and learning rate) against steps as a PNG, or None without points."""
    curve = metrics.get("loss_curve") or []
    if not curve:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.2), dpi=110)
    ax = figure.add_subplot()
    steps = [p["step"] for p in curve]
    ax.plot(steps, [p["loss"] for p in curve], color="#1f5fa8", label="train loss")
    evals = metrics.get("eval") or {}
    if evals.get("loss_tuned") is not None:
        ax.axhline(evals["loss_tuned"], color="#2a9d4b", linestyle="--", label="eval loss (tuned)")
    if evals.get("loss_base") is not None:
        ax.axhline(evals["loss_base"], color="#b23a3a", linestyle=":", label="eval loss (base)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    lr = ax.twinx()
    lr.plot(steps, [p.get("lr", 0.0) for p in curve], color="#999999", linewidth=0.8, label="learning rate")
    lr.set_ylabel("learning rate", color="#777777")
    lines = ax.get_legend_handles_labels()
    more = lr.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="center right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ddd; padding: .3em .6em; vertical-align: top; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.up { color: #1d7a38; } .down { color: #b23a3a; } .warn { background: #fff3cd; padding: .5em; border: 1px solid #e6c65c; }
.sample td { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 12px; width: 25%; }
.muted { color: #777; }
"""


def render_html(model: ModelDir) -> str:
    """The whole report as one HTML document (no external files, scripts or fonts)."""
    m = model.metrics
    e = html.escape
    train, evals, data = m.get("train") or {}, m.get("eval") or {}, m.get("data") or {}
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Fine-tuning report: {e(model.job_id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Fine-tuning report: {e(model.job_id)}</h1>",
        f"<p>Base model <b>{e(str(m.get('base_model', '?')))}</b>, method <b>{e(str(m.get('method', '?')))}</b>. "
        f"<span class='muted'>Model dir: {e(str(model.path))}</span></p>",
        "<h2>Base vs tuned</h2>",
    ]
    rows = quality_rows(m)
    if rows:
        scored = (m.get("quality") or {}).get("samples_scored")
        parts.append(f"<p class='muted'>Scores 0-100 on {e(str(scored))} held-out examples.</p>" if scored else "")
        parts.append(_table(["metric", "base", "tuned", "change"], [
            [key, fmt(b), fmt(t), _change_cell(g, b)] for key, b, t, g in rows
        ], raw_last=True))
        parts.append(f"<p class='muted'>{e(QUALITY_NOTE)}</p>")
        missing = unmeasured(m)
        if missing:
            parts.append(f"<p class='muted'>n/a: this run did not measure {e(', '.join(missing))} (an older launcher).</p>")
    else:
        parts.append("<p>No quality metrics (the job had no eval samples).</p>")
    parts.append("<h2>Eval loss</h2>")
    loss = eval_loss_row(m)
    if loss:
        base, tuned, change = loss
        parts.append(_table(["", "base", "tuned", "change"], [
            ["loss", fmt(base, 4), fmt(tuned, 4), fmt_change(change, base)],
            ["examples", str(evals.get("examples", "n/a")), "", ""],
        ]))
    else:
        parts.append("<p>No eval set.</p>")
    parts.append("<h2>Forgetting check</h2>")
    forgetting = m.get("forgetting")
    if not forgetting:
        parts.append("<p>Not run: the job had no <code>general_eval</code> dataset.</p>")
    else:
        parts.append(_table(["general-text perplexity", "base", "tuned", "rise"], [[
            "", fmt(forgetting.get("general_ppl_base")), fmt(forgetting.get("general_ppl_tuned")),
            fmt(forgetting.get("rise_pct"), 1, "%"),
        ]]))
        if forgetting.get("warning"):
            parts.append(
                f"<p class='warn'>Perplexity on general text rose by {fmt(forgetting.get('rise_pct'), 1, '%')}, more than the "
                f"{fmt(forgetting.get('threshold_pct'), 1, '%')} threshold: the model may have forgotten general skills.</p>"
            )
    review = m.get("human_review")
    if review:
        parts.append("<h2>Human review</h2>")
        parts.append(_table(["criterion", "mean (1-5)", *map(str, range(1, 6))], [
            [c, fmt(review["means"].get(c)), *(str(review["distribution"][c].get(str(s), 0)) for s in range(1, 6))]
            for c in review.get("criteria", CRITERIA)
        ]))
        parts.append(f"<p class='muted'>{review['count']} rated samples, imported {e(str(review.get('imported_at', '')))}.</p>")
    parts.append("<h2>Training</h2>")
    png = loss_curve_png(m)
    if png:
        parts.append(f"<img alt='training loss curve' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    parts.append(_table(["", ""], [
        ["steps / epochs", f"{train.get('steps', 'n/a')} / {train.get('epochs', 'n/a')}"],
        ["training examples", str(data.get("train_examples", train.get("examples", "n/a")))],
        ["target tokens", f"{train.get('target_tokens', 0):,}"],
        ["throughput", f"{fmt(train.get('tokens_per_s'), 0)} tokens/s on {e(str(train.get('device', '?')))}"],
        ["runtime", fmt(train.get("runtime_s"), 1, " s")],
        ["peak memory", fmt((train.get("peak_memory_bytes") or 0) / 2**30, 2, " GiB")],
        ["truncated / fully truncated", f"{data.get('truncated', 'n/a')} / {data.get('fully_truncated', 'n/a')}"],
        ["packed rows", str(data.get("packed_rows", "n/a"))],
    ]))
    samples = model.samples()
    parts.append(f"<h2>Samples ({len(samples)})</h2>")
    ratings = {r["id"]: r for r in (review or {}).get("ratings", [])}
    for sample in samples:
        rating = ratings.get(sample.get("id"))
        scored = " · ".join(f"{c} {rating[c]}" for c in CRITERIA) if rating else ""
        parts.append(
            f"<p><b>#{e(str(sample.get('id')))}</b> <span class='muted'>{e(str(sample.get('source', '')))}</span>"
            + (f" · review: {e(scored)}" + (f" · “{e(rating['comment'])}”" if rating.get("comment") else "") if rating else "")
            + "</p>"
        )
        parts.append(f"<p class='muted'>{e(_facts_line(sample))}</p>")
        parts.append(_table(["prompt", "reference", "base", "tuned"], [[
            prompt_text(sample.get("prompt", [])), sample.get("reference", ""), sample.get("base", ""), sample.get("tuned", ""),
        ]], css="sample"))
    parts.append("</body></html>\n")
    return "\n".join(p for p in parts if p)


def _change_cell(value: float | None, base: float | None) -> str:
    css = "" if value is None else "up" if value > 0 else "down" if value < 0 else ""
    return f"<span class='{css}'>{html.escape(fmt_change(value, base))}</span>"


def _facts_line(sample: dict[str, Any]) -> str:
    """``facts backed / stated, kept / in the reference`` for base and tuned, and what the tuned answer made up."""
    (base, _), (tuned, made_up) = sample_facts(sample, "base"), sample_facts(sample, "tuned")
    parts = [f"{side}: {c.supported}/{c.output} facts backed, {c.reproduced}/{c.reference} of the reference's kept"
             for side, c in (("base", base), ("tuned", tuned))]
    if made_up:
        parts.append("tuned states without backing: " + ", ".join(sorted(map(fact_text, made_up))))
    return " · ".join(parts)


def _table(header: list[str], rows: list[list[str]], css: str = "", raw_last: bool = False) -> str:
    """An HTML table; every cell is escaped except a trusted last column built by this module."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for index, cell in enumerate(row):
            text = cell if raw_last and index == len(row) - 1 else html.escape(str(cell))
            numeric = css != "sample" and index > 0
            cells.append(f"<td class='num'>{text}</td>" if numeric else f"<td>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table class='{css}'><tr>{head}</tr>{''.join(body)}</table>"


def prompt_text(turns: list[dict[str, str]]) -> str:
    """A conversation as plain text: ``[role]`` then the content, one block per turn."""
    return "\n\n".join(f"[{t.get('role', '?')}]\n{t.get('content', '')}" for t in turns)


# --- human review -----------------------------------------------------------------------------------
def export_review(model: ModelDir, out: Path, *, force: bool = False) -> int:
    """Write the samples for reviewers, with empty rating columns; returns the number of rows."""
    samples = model.samples()
    if not samples:
        raise NotFoundError(f"no samples in {model.samples_path}. To fix: run the job with review_samples > 0")
    if out.exists() and not force:
        raise UserInputError(f"'{out}' already exists (it may hold ratings). To fix: choose another --out, or pass --force")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(REVIEW_COLUMNS)
    for s in samples:
        writer.writerow([s["id"], s.get("source", ""), prompt_text(s.get("prompt", [])), s.get("reference", ""), s.get("tuned", ""), "", "", "", ""])
    write_atomic(out, buffer.getvalue(), encoding="utf-8")  # no BOM: csv readers, pandas and diff see the header as is
    return len(samples)


def import_review(model: ModelDir, path: Path) -> dict[str, Any]:
    """Check the reviewers' CSV and fold its ratings into metrics.json (``human_review``).

    Every problem is collected first (``path: row N (sample ID): ...``, N as a spreadsheet numbers
    rows, the header being row 1); on any problem a DataError lists them and nothing is written.
    A row whose three ratings are all empty is skipped (not reviewed yet): only the rated rows are
    imported, and ``unrated`` counts the job's samples without a rating.
    """
    if not path.is_file():
        raise NotFoundError(f"review file '{path}' does not exist. To fix: check the path")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet may add a BOM when it saves
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 (byte {exc.start}). To fix: save the sheet as CSV UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in ("id", *CRITERIA) if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}. "
            "To fix: keep the header that 'launcher review --out' wrote"
        )
    known = {s["id"] for s in model.samples()}
    errors: list[str] = []
    ratings: list[dict[str, Any]] = []
    seen: dict[int, int] = {}
    for row_number, row in enumerate(reader, start=2):
        raw_id = (row.get("id") or "").strip()
        where = f"{path}: row {row_number}" + (f" (sample {raw_id})" if raw_id else "")
        values = {c: (row.get(c) or "").strip() for c in CRITERIA}
        if not any(values.values()) and not (row.get("comment") or "").strip():
            continue  # not reviewed yet
        try:
            sample_id = int(raw_id)
        except ValueError:
            errors.append(f"{where}: id {raw_id!r} is not a sample id. To fix: keep the id column as exported")
            continue
        if sample_id not in known:
            errors.append(f"{where}: no sample with id {sample_id} in this job. To fix: keep the id column as exported")
            continue
        if sample_id in seen:
            errors.append(f"{where}: sample {sample_id} is rated twice (also row {seen[sample_id]}). To fix: keep one row per sample")
            continue
        seen[sample_id] = row_number
        rating: dict[str, Any] = {"id": sample_id}
        for criterion, value in values.items():
            if value not in {"1", "2", "3", "4", "5"}:
                shown = "empty" if not value else f"{value!r}"
                errors.append(f"{where}: {criterion} is {shown}, expected a whole number from 1 to 5. To fix: rate it 1-5")
            else:
                rating[criterion] = int(value)
        rating["comment"] = (row.get("comment") or "").strip()
        ratings.append(rating)
    if errors:
        listed = errors[:MAX_LISTED_ERRORS] + ([f"... and {len(errors) - MAX_LISTED_ERRORS} more"] if len(errors) > MAX_LISTED_ERRORS else [])
        raise ReviewErrors(listed, f"{len(errors)} problem{'s' if len(errors) > 1 else ''} in {path}, nothing imported. To fix: correct the rows listed above")
    if not ratings:
        raise DataError(f"{path}: no row is rated. To fix: fill in {', '.join(CRITERIA)} (1-5) for at least one sample")
    review = {
        "criteria": list(CRITERIA),
        "scale": [1, 5],
        "count": len(ratings),
        "samples": len(known),
        "unrated": len(known) - len(ratings),  # not imported: rate them and import the sheet again
        "means": {c: round(sum(r[c] for r in ratings) / len(ratings), 3) for c in CRITERIA},
        "distribution": {c: {str(s): sum(1 for r in ratings if r[c] == s) for s in range(1, 6)} for c in CRITERIA},
        "ratings": ratings,
        "source": str(path),
        "imported_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    metrics = dict(model.metrics, human_review=review)  # a re-import replaces the previous ratings
    write_atomic(model.path / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    model.metrics = metrics
    return review


class ReviewErrors(DataError):
    """Several bad rows; ``details`` lists them (the CLI prints them before the one-line error)."""

    def __init__(self, lines: list[str], message: str):
        super().__init__(message)
        self.details = tuple(lines)
