"""``report``, ``metrics``, ``review`` and the training summary as a user reads them: one way to show a
change, a reviewers' CSV without a BOM, a partial import that says what it left out."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from launcher.cli.main import app
from launcher.report import CRITERIA, REVIEW_COLUMNS

runner = CliRunner()
JOB_ID = "fin-summary-run1-4567cdef"


def cli(*args: str):
    return runner.invoke(app, list(map(str, args)), catch_exceptions=False)


@pytest.fixture
def model_dir(finished_job) -> Path:
    """A private copy of the finished job's model dir, its eval losses set to known values."""
    from conftest import install_local_job

    target = install_local_job(JOB_ID, finished_job / "model")
    metrics = json.loads((target / "metrics.json").read_text(encoding="utf-8"))
    metrics["eval"].update(loss_base=8.1246, loss_tuned=0.5)
    (target / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return target


def test_the_eval_loss_change_reads_the_same_in_the_summary_the_report_and_the_terminal(model_dir, capsys):
    from entrypoints import train

    metrics = json.loads((model_dir / "metrics.json").read_text(encoding="utf-8"))
    train.summary(metrics)  # what the training job prints at its end
    summary = capsys.readouterr().out
    assert re.search(r"eval loss\s+│\s+8\.1246\s+│\s+0\.5000\s+│\s+-93\.8%", summary), summary
    assert "-7.6246" not in summary
    result = cli("report", JOB_ID)
    assert result.exit_code == 0, result.output
    assert re.search(r"eval loss\s+│\s+8\.1246\s+│\s+0\.5000\s+│\s+-93\.8%", result.stdout), result.stdout
    shown = cli("metrics", JOB_ID)  # the same table without writing a report
    assert shown.exit_code == 0 and re.search(r"eval loss\s+│\s+8\.1246\s+│\s+0\.5000\s+│\s+-93\.8%", shown.stdout)
    assert json.loads(cli("metrics", JOB_ID, "--json").stdout) == metrics
    page = (model_dir / "report.html").read_text(encoding="utf-8")
    assert "<td>loss</td><td class='num'>8.1246</td><td class='num'>0.5000</td><td class='num'>-93.8%</td>" in page
    # The other rows of the summary show their change the way the report does too.
    rouge = metrics["quality"]["improvement_pct"]["rougeL"]
    shown = "n/a (base 0)" if rouge is None else f"{rouge:+,.1f}%"
    assert re.search(rf"rougeL\s+│[^│]+│[^│]+│\s+{re.escape(shown)}", summary)
    assert re.search(rf"rougeL\s+│[^│]+│[^│]+│\s+{re.escape(shown)}", result.stdout)


def test_the_review_sheet_has_no_bom(model_dir, tmp_path):
    out = tmp_path / "review.csv"
    assert cli("review", JOB_ID, "--out", out).exit_code == 0
    data = out.read_bytes()
    assert not data.startswith(b"\xef\xbb\xbf")
    assert data.decode("utf-8").splitlines()[0] == ",".join(REVIEW_COLUMNS)


def test_review_export_json(model_dir, tmp_path):
    out = tmp_path / "review.csv"
    result = cli("review", JOB_ID, "--out", out, "--json")
    assert result.exit_code == 0
    exported = json.loads(result.stdout)
    with out.open(encoding="utf-8", newline="") as handle:
        assert exported["csv"] == str(out) and exported["samples"] == len(list(csv.reader(handle))) - 1
    assert exported["next"] == f"launcher review {JOB_ID} --import {out}"


def test_importing_some_rated_rows_imports_those_and_says_how_many_are_not_rated(model_dir, tmp_path):
    out = tmp_path / "review.csv"
    assert cli("review", JOB_ID, "--out", out).exit_code == 0
    with out.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    total = len(rows) - 1
    assert total >= 3
    start = REVIEW_COLUMNS.index("factual_accuracy")
    rows[1][start : start + 3] = ["5", "4", "3"]
    rows[3][start : start + 3] = ["2", "2", "2"]
    with out.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)
    result = cli("review", JOB_ID, "--import", out)
    assert result.exit_code == 0, result.output
    assert (
        f"Imported 2 rated samples into {model_dir / 'metrics.json'}; {total - 2} of the job's {total} samples are not "
        f"rated yet and were not imported (rate them in {out} and import it again)."
    ) in " ".join(result.stdout.split())
    review = json.loads((model_dir / "metrics.json").read_text(encoding="utf-8"))["human_review"]
    assert [r["id"] for r in review["ratings"]] == [int(rows[1][0]), int(rows[3][0])]
    assert review["means"] == {c: v for c, v in zip(CRITERIA, (3.5, 3.0, 2.5))}
    payload = json.loads(cli("review", JOB_ID, "--import", out, "--json").stdout)
    assert payload["count"] == 2 and payload["unrated"] == total - 2 and payload["samples"] == total
