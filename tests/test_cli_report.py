"""``report``, ``review`` and the training summary as a user reads them: one way to show a change, a
reviewers' CSV without a BOM, a partial import that says what it left out."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from launcher.cli.main import app

runner = CliRunner()
JOB_ID = "fin-summary-run1-4567cdef"


def cli(*args: str):
    return runner.invoke(app, list(map(str, args)), catch_exceptions=False)


@pytest.fixture
def model_dir(finished_job) -> Path:
    """A private copy of the finished job's model dir, its eval losses set to known values."""
    target = Path(os.environ["LAUNCHER_HOME"]) / "jobs" / JOB_ID / "model"
    shutil.copytree(finished_job / "model", target)
    metrics = json.loads((target / "metrics.json").read_text(encoding="utf-8"))
    metrics["eval"].update(loss_base=8.1246, loss_tuned=0.5)
    (target / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return target


def test_review_export_json(model_dir, tmp_path):
    out = tmp_path / "review.csv"
    result = cli("review", JOB_ID, "--out", out, "--json")
    assert result.exit_code == 0
    exported = json.loads(result.stdout)
    with out.open(encoding="utf-8", newline="") as handle:
        assert exported["csv"] == str(out) and exported["samples"] == len(list(csv.reader(handle))) - 1
    assert exported["next"] == f"launcher review {JOB_ID} --import {out}"