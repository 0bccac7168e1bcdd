"""``launcher report`` and ``launcher review`` on a real finished job (the session's tiny-llama run)."""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from launcher.cli.main import app
from launcher.report import CRITERIA, REVIEW_COLUMNS

runner = CliRunner()
JOB_ID = "fin-summary-run1-0123abcd"


def cli(*args: str):
    return runner.invoke(app, list(map(str, args)), catch_exceptions=False)


@pytest.fixture
def model_dir(finished_job) -> Path:
    """A private copy of the finished job's model dir, placed where a local job id resolves."""
    folder = Path(os.environ["LAUNCHER_HOME"]) / "jobs" / JOB_ID
    shutil.copytree(finished_job / "model", folder / "model")
    (folder / "job.json").write_text(json.dumps({"job_id": JOB_ID, "name": "fin-summary", "created_at": "2026-12-01T10:00:00Z"}))
    (folder / "state.json").write_text(json.dumps({"state": "SUCCEEDED", "attempt": 1}))  # as the local runner leaves it
    return folder / "model"


def metrics(model: Path) -> dict:
    return json.loads((model / "metrics.json").read_text(encoding="utf-8"))


def samples(model: Path) -> list[dict]:
    return [json.loads(line) for line in (model / "samples.jsonl").read_text(encoding="utf-8").splitlines()]


def test_report_by_job_id_writes_one_self_contained_html(model_dir):
    result = cli("report", JOB_ID)
    assert result.exit_code == 0, result.output
    page = (model_dir / "report.html").read_text(encoding="utf-8")
    assert result.stdout.rstrip().endswith(f"Report written to {model_dir / 'report.html'}")
    # Self-contained: the loss curve is an inline PNG; nothing is fetched from elsewhere.
    png = re.search(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert png and base64.b64decode(png.group(1)).startswith(b"\x89PNG\r\n\x1a\n")
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)
    # The base-vs-tuned table, in the page and on the terminal, with the job's own figures.
    m = metrics(model_dir)
    tuned, base = m["quality"]["tuned"]["rougeL"], m["quality"]["base"]["rougeL"]
    assert f"<td>rougeL</td><td class='num'>{base:,.2f}</td><td class='num'>{tuned:,.2f}</td>" in page
    assert re.search(rf"rougeL\s+│\s+{base:,.2f}\s+│\s+{tuned:,.2f}\s+│", result.stdout)
    assert f"{m['eval']['loss_tuned']:,.4f}" in page
    # Fact precision and recall sit beside ROUGE/BLEU/chrF, with the job's own figures.
    for key in ("fact_precision", "fact_recall"):
        base, tuned = m["quality"]["base"][key], m["quality"]["tuned"][key]
        assert f"<td>{key}</td><td class='num'>{base:,.2f}</td><td class='num'>{tuned:,.2f}</td>" in page
        assert re.search(rf"{key}\s+│\s+{base:,.2f}\s+│\s+{tuned:,.2f}\s+│", result.stdout)
    assert "fact_recall: share of the reference&#x27;s facts the answer kept." in page
    assert "Not run: the job had no <code>general_eval</code> dataset." in page
    for sample in samples(model_dir):
        assert f"<b>#{sample['id']}</b>" in page


def test_report_escapes_model_output(model_dir, tmp_path):
    rows = samples(model_dir)
    rows[0]["tuned"] = "<script>alert('x')</script> & more"
    (model_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "r.html"
    assert cli("report", model_dir, "--out", out).exit_code == 0
    page = out.read_text(encoding="utf-8")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page


def test_report_of_an_older_run_without_fact_scores_shows_n_a(model_dir):
    m = metrics(model_dir)
    for side in ("base", "tuned", "improvement_pct"):
        m["quality"][side] = {k: v for k, v in m["quality"][side].items() if not k.startswith("fact_")}
    (model_dir / "metrics.json").write_text(json.dumps(m), encoding="utf-8")
    result = cli("report", JOB_ID)
    assert result.exit_code == 0, result.output
    page = (model_dir / "report.html").read_text(encoding="utf-8")
    assert "<td>fact_precision</td><td class='num'>n/a</td><td class='num'>n/a</td><td class='num'><span class=''>n/a</span></td>" in page
    assert re.search(r"fact_recall\s+│\s+n/a\s+│\s+n/a\s+│\s+n/a\s+│", result.stdout)
    assert "n/a: this run did not measure fact_precision, fact_recall (an older launcher)." in result.stdout
    assert f"<td>rougeL</td><td class='num'>{m['quality']['base']['rougeL']:,.2f}</td>" in page


def test_report_names_the_facts_a_tuned_answer_got_wrong(model_dir):
    rows = samples(model_dir)
    reference = rows[0]["reference"]  # "Client: <name>. Age: <n>. Risk: <risk>. Cash: $<amount>.": 3 facts
    rows[0]["prompt"][-1]["content"] += " Goal: retire in 2031."  # backs the tuned answer's year
    rows[0]["tuned"] = re.sub(r"\$[\d,]+", "$777,000", reference.replace("Client: ", "Client: Zed Quinn, not ")) + " Retires in 2031."
    rows[0]["base"] = reference
    (model_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert cli("report", JOB_ID).exit_code == 0
    page = (model_dir / "report.html").read_text(encoding="utf-8")
    assert "base: 3/3 facts backed, 3/3 of the reference&#x27;s kept · tuned: 3/5 facts backed, 2/3 of the reference&#x27;s kept" in page
    assert "tuned states without backing: 777000 USD, Zed Quinn" in page


def test_report_accepts_a_job_dir_or_model_dir_and_prints_json(model_dir, tmp_path):
    out = tmp_path / "sub" / "report.html"
    result = cli("report", model_dir.parent, "--out", out, "--json")
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload["report"] == str(out) and out.is_file()
    assert payload["metrics"]["quality"] == metrics(model_dir)["quality"]


def test_unknown_job_id_exits_2():
    result = cli("report", "no-such-job")
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: 'no-such-job' is neither a job id launcher knows nor a model folder. "
        "To fix: pass a job id from 'launcher list' or the path of a model dir\n"
    )


def test_job_without_metrics_exits_2():
    job = Path(os.environ["LAUNCHER_HOME"]) / "jobs" / "still-running"
    (job / "model").mkdir(parents=True)
    (job / "job.json").write_text(json.dumps({"job_id": "still-running"}))  # a local job the runner has not finished
    result = cli("report", "still-running")
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: no metrics.json in {job / 'model'}: the job has not finished (or failed). "
        "To fix: check it with 'launcher status still-running' and wait until it has SUCCEEDED\n"
    )


def export(tmp_path) -> tuple[Path, list[list[str]]]:
    out = tmp_path / "review.csv"
    result = cli("review", JOB_ID, "--out", out)
    assert result.exit_code == 0, result.output
    with out.open(encoding="utf-8-sig", newline="") as handle:
        return out, list(csv.reader(handle))


def rate(path: Path, rows: list[list[str]], ratings: dict[int, tuple[str, str, str, str]]) -> Path:
    """Fill rows (1-based data rows) with (factual_accuracy, tone, guideline_adherence, comment)."""
    rows = [list(r) for r in rows]
    start = REVIEW_COLUMNS.index("factual_accuracy")
    for row, values in ratings.items():
        rows[row][start : start + 4] = values
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def test_review_export_has_every_sample_and_empty_rating_columns(model_dir, tmp_path):
    out, rows = export(tmp_path)
    assert rows[0] == list(REVIEW_COLUMNS)
    expected = samples(model_dir)
    assert [int(r[0]) for r in rows[1:]] == [s["id"] for s in expected]
    first = dict(zip(rows[0], rows[1]))
    assert first["answer"] == expected[0]["tuned"] and first["reference"] == expected[0]["reference"]
    assert all(first[c] == "" for c in (*CRITERIA, "comment"))
    # A second export does not overwrite a sheet that may hold ratings.
    again = cli("review", JOB_ID, "--out", out)
    assert again.exit_code == 2
    assert again.stderr == f"Error: '{out}' already exists (it may hold ratings). To fix: choose another --out, or pass --force\n"


def test_review_import_folds_ratings_into_metrics(model_dir, tmp_path):
    out, rows = export(tmp_path)
    n = len(rows) - 1
    assert n >= 3
    rate(out, rows, {1: ("5", "4", "4", "clear"), 2: ("3", "4", "5", ""), 3: ("4", "2", "5", "tone too curt")})
    before = metrics(model_dir)
    result = cli("review", JOB_ID, "--import", out)
    assert result.exit_code == 0, result.output
    review = metrics(model_dir)["human_review"]
    assert review["count"] == 3
    assert review["means"] == {"factual_accuracy": 4.0, "tone": 3.333, "guideline_adherence": 4.667}
    assert review["distribution"]["tone"] == {"1": 0, "2": 1, "3": 0, "4": 2, "5": 0}
    assert [r["comment"] for r in review["ratings"]] == ["clear", "", "tone too curt"]
    assert {k: v for k, v in metrics(model_dir).items() if k != "human_review"} == before
    assert re.search(r"tone\s+│\s+3\.33\s+│\s+0\s+│\s+1\s+│\s+0\s+│\s+2\s+│\s+0", result.stdout)
    # The automatic scores follow, so raters' factual accuracy can be set beside fact precision and recall.
    fact_precision = before["quality"]["tuned"]["fact_precision"]
    assert re.search(rf"fact_precision\s+│\s+{before['quality']['base']['fact_precision']:,.2f}\s+│\s+{fact_precision:,.2f}\s+│", result.stdout)
    # Re-importing replaces the previous ratings; the report shows them.
    rate(out, rows, {1: ("1", "1", "1", "")})
    assert cli("review", JOB_ID, "--import", out).exit_code == 0
    review = metrics(model_dir)["human_review"]
    assert review["count"] == 1 and review["means"] == {c: 1.0 for c in CRITERIA}
    assert cli("report", JOB_ID).exit_code == 0
    assert "<h2>Human review</h2>" in (model_dir / "report.html").read_text(encoding="utf-8")


def test_review_import_lists_every_bad_row_and_writes_nothing(model_dir, tmp_path):
    out, rows = export(tmp_path)
    rows[3][0] = "999"
    rate(out, rows, {1: ("6", "4", "4", ""), 2: ("3", "", "5", ""), 3: ("4", "4", "4", "")})
    before = (model_dir / "metrics.json").read_bytes()
    result = cli("review", JOB_ID, "--import", out)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"{out}: row 2 (sample {rows[1][0]}): factual_accuracy is '6', expected a whole number from 1 to 5. To fix: rate it 1-5",
        f"{out}: row 3 (sample {rows[2][0]}): tone is empty, expected a whole number from 1 to 5. To fix: rate it 1-5",
        f"{out}: row 4 (sample 999): no sample with id 999 in this job. To fix: keep the id column as exported",
        f"Error: 3 problems in {out}, nothing imported. To fix: correct the rows listed above",
    ]
    assert (model_dir / "metrics.json").read_bytes() == before


def test_review_import_needs_the_rating_columns_and_one_rating(model_dir, tmp_path):
    sheet = tmp_path / "bare.csv"
    sheet.write_text("id,comment\n0,fine\n", encoding="utf-8")
    result = cli("review", JOB_ID, "--import", sheet)
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: {sheet}: missing columns factual_accuracy, tone, guideline_adherence. "
        "To fix: keep the header that 'launcher review --out' wrote\n"
    )
    out, rows = export(tmp_path)
    result = cli("review", JOB_ID, "--import", out)
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: {out}: no row is rated. To fix: fill in factual_accuracy, tone, guideline_adherence (1-5) for at least one sample\n"
    )


def test_review_needs_exactly_one_of_out_or_import(model_dir):
    result = cli("review", JOB_ID)
    assert result.exit_code == 2
    assert result.stderr == "Error: review needs exactly one of --out FILE.csv or --import FILE.csv. To fix: pass one of them\n"


def test_report_shows_the_forgetting_check(make_job, tmp_path):
    from entrypoints import platform, train
    from launcher.spec import TrainConfig

    general = [{"text": f"The market report for week {i} shows stable bond yields and steady growth."} for i in range(20)]
    root = make_job(general=general, hp={"epochs": "1", "forgetting_threshold_pct": "0.001", "review_samples": "2"})
    plat = platform.detect(["--root", str(root)])
    train.run(plat, TrainConfig.from_mapping(plat.hyperparameters), install_signals=False)
    forgetting = metrics(root / "model")["forgetting"]
    out = tmp_path / "report.html"
    result = cli("report", root / "model", "--out", out)
    assert result.exit_code == 0
    page = out.read_text(encoding="utf-8")
    row = f"<td class='num'>{forgetting['general_ppl_base']:,.2f}</td><td class='num'>{forgetting['general_ppl_tuned']:,.2f}</td>"
    assert row in page
    assert re.search(r"general ppl\s+│", result.stdout)
    assert ("<p class='warn'>Perplexity on general text rose by" in page) is forgetting["warning"]
    assert ("may have forgotten general skills" in result.stdout) is forgetting["warning"]


def test_a_change_over_a_vanishing_base_score_is_not_a_percentage():
    from entrypoints import evaluate

    change = evaluate.improvement_pct({"bleu": 1e-300, "chrf": 0.22, "rougeL": 0.0}, {"bleu": 0.002, "chrf": 1.53, "rougeL": 5.0})
    assert change["bleu"] is None and change["rougeL"] is None  # a smoothed BLEU of ~1e-300 would print 300 digits
    assert change["chrf"] == pytest.approx(100 * (1.53 - 0.22) / 0.22)
