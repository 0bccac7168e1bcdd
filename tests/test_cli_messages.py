"""What a new user reads: one line for a missing file, a fix in every error, a did-you-mean for a typo,
plan's arithmetic as it is done, whole sentences."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from launcher.cli.main import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(map(str, args)), catch_exceptions=False)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_validate_of_a_missing_file_prints_only_the_error(tmp_path):
    missing = tmp_path / "nope.jsonl"
    result = invoke("validate", missing)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"Error: dataset '{missing}' does not exist. To fix: check the path\n"
    # The same for a spec whose eval file is missing: no table of the train set first.
    train = tmp_path / "train.jsonl"
    train.write_text('{"prompt": "a?", "completion": "b."}\n')
    spec = write(tmp_path / "job.yaml", f"name: a\ndata: {{train: {train}, eval: {tmp_path / 'eval.jsonl'}}}\n")
    result = invoke("validate", spec)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"Error: dataset '{tmp_path / 'eval.jsonl'}' does not exist. To fix: check the path\n"


@pytest.mark.parametrize(
    "line",
    [
        {"prompt": "a?", "completion": ["b"]},
        {"messages": []},
        {"messages": ["hi"]},
        {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "assistant", "content": "b"}]},
    ],
)
def test_every_bad_line_says_how_to_fix_it(tmp_path, line):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(line) + "\n")
    result = invoke("validate", path)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {path}:1: ") and "To fix: " in result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("command", ["validate", "plan", "train"])
@pytest.mark.parametrize("typo", ["H1OO", "h1oo", "A1OG"])
def test_an_accelerator_typo_gets_a_did_you_mean(tmp_path, command, typo):
    train = tmp_path / "train.jsonl"
    train.write_text('{"prompt": "a?", "completion": "b."}\n')
    spec = write(tmp_path / "job.yaml", f"name: a\ndata: {{train: {train}}}\ncompute: {{accelerator: '{typo}:1'}}\n")
    result = invoke(command, spec)
    assert result.exit_code == 2
    expected = {"H1OO": "H100", "h1oo": "H100", "A1OG": "A10G"}[typo]
    assert f"unknown GPU kind '{typo}'. Did you mean '{expected}'?" in result.stderr
    assert "To fix:" in result.stderr and len(result.stderr.splitlines()) == 1