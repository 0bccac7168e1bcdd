"""The CLI contract every command keeps: ``--json`` everywhere, errors as JSON under it, one way to fail
(``Error: ...``, exit 2 bad input / 1 failure, the traceback only with --debug and the exit code kept),
a global ``--version``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import launcher
from launcher.cli.main import app

runner = CliRunner()

COMMANDS = ["init", "validate", "plan", "train", "status", "logs", "cancel", "list", "report", "review",
            "deploy", "invoke", "endpoints", "undeploy"]
OWN_JSON_HELP = ("logs", "invoke")  # their --json streams one object a line


def invoke(*args: str):
    return runner.invoke(app, list(map(str, args)), catch_exceptions=False)


def json_option_help(command: str) -> str:
    """The --json line of a command's help, whitespace collapsed."""
    text = " ".join(invoke(command, "--help").stdout.split())
    assert "--json" in text, f"'{command}' has no --json"
    return text[text.index("--json") :].split(" --", 1)[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_json(command):
    assert "messages go to stderr" in json_option_help(command) or command in OWN_JSON_HELP


def test_the_json_option_reads_the_same_on_every_command():
    helps = {command: json_option_help(command) for command in COMMANDS if command not in OWN_JSON_HELP}
    assert len(set(helps.values())) == 1, helps


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"launcher {launcher.__version__}\n"


def bad_inputs(tmp_path: Path) -> dict[str, list[str]]:
    existing = tmp_path / "job.yaml"
    existing.write_text("mine\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: a\ndata: [unclosed\n")
    return {
        "init": ["init", existing],
        "validate": ["validate", broken],
        "plan": ["plan", tmp_path / "nope.yaml"],
        "train": ["train", tmp_path / "nope.yaml"],
        "status": ["status", "nope-run1-00000000"],
        "logs": ["logs", "nope-run1-00000000"],
        "cancel": ["cancel", "nope-run1-00000000"],
        "list": ["list", "--state", "runing"],
        "report": ["report", "no-such-job"],
        "review": ["review", "no-such-job"],
        "deploy": ["deploy", tmp_path / "nope"],
        "invoke": ["invoke", "ghost", "hello"],
        "endpoints": ["endpoints", "--backend", "nowhere"],
        "undeploy": ["undeploy", "ghost"],
    }


@pytest.mark.parametrize("command", COMMANDS)
def test_an_error_is_one_line_with_the_fix(tmp_path, command):
    result = invoke(*bad_inputs(tmp_path)[command])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "To fix:" in lines[0], result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_under_json_an_error_is_a_json_object_on_stderr(tmp_path, command):
    args = bad_inputs(tmp_path)[command]
    plain = invoke(*args).stderr.removeprefix("Error: ").rstrip("\n")
    result = invoke(*args, "--json")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert json.loads(result.stderr) == {"error": plain, "exit_code": 2}


def test_under_json_a_usage_error_is_json_too():
    result = invoke("validate", "--json", "--no-such-flag")
    assert result.exit_code == 2
    error = json.loads(result.stderr)
    assert error["exit_code"] == 2
    assert error["error"].startswith("No such option: --no-such-flag.") and "--help" in error["error"]
    # Without --json it stays click's usage message.
    assert "Usage:" in invoke("validate", "--no-such-flag").stderr


def test_debug_adds_the_traceback_and_keeps_the_exit_code(tmp_path, monkeypatch):
    monkeypatch.setenv("LAUNCHER_DEBUG", "0")  # --debug sets it for child processes; restored after the test
    missing = tmp_path / "nope.yaml"
    message = f"Error: job spec '{missing}' does not exist. To fix: check the path, or run 'launcher init {missing}'"
    assert invoke("plan", missing).stderr == message + "\n"
    result = invoke("--debug", "plan", missing)
    assert result.exit_code == 2
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert "launcher.errors.NotFoundError" in result.stderr
    assert result.stderr.splitlines()[-1] == message
    # The environment variable does the same, and under --json the traceback goes into the object.
    monkeypatch.setenv("LAUNCHER_DEBUG", "1")
    result = invoke("plan", missing, "--json")
    assert result.exit_code == 2
    error = json.loads(result.stderr)
    assert error["exit_code"] == 2 and "Traceback" in error["traceback"]


def test_init_json(tmp_path):
    path = tmp_path / "job.yaml"
    result = invoke("init", path, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"path": str(path), "next": f"launcher train {path}"}
    assert path.is_file()


def test_several_problems_are_listed_then_one_error_or_one_json_object(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a"}\nnot json\n')
    result = invoke("validate", path)
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[:2] == [
        f"{path}:1: missing field 'completion'. To fix: add it",
        f"{path}:2: not valid JSON (Expecting value at column 1). To fix: correct or remove the line",
    ]
    assert lines[2].startswith("Error: 2 problems in train (2), listed above. To fix:")
    result = invoke("validate", path, "--json")
    assert result.exit_code == 2
    assert json.loads(result.stdout)["ok"] is False  # the report itself, for scripts
    error = json.loads(result.stderr)
    assert error["details"] == lines[:2] and error["error"] == lines[2].removeprefix("Error: ")
