"""Local deploy end to end through the CLI: deploy a finished job by id, invoke (whole and streamed),
list, re-attach, undeploy; the capture kept; the API key in no file or listing. Bad input starts nothing."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import install_local_job
from launcher.cli.main import app

KEY = "deploy-key-19d2c7aa"


def cli(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.mark.slow
def test_local_deploy_lifecycle_through_the_cli(finished_job, tmp_path, monkeypatch):
    import os
    from pathlib import Path

    from launcher.capture import read_records

    monkeypatch.setenv("LAUNCHER_API_KEY", KEY)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parents[1]))
    job_id = "claims-0123456789ab-run1"
    install_local_job(job_id, finished_job / "model")
    deployed = cli("deploy", job_id, "--option", "threads=1", "--json")
    assert deployed.exit_code == 0, deployed.output
    endpoint = json.loads(deployed.stdout)
    assert endpoint["name"] == job_id and endpoint["state"] == "InService" and endpoint["auth"] is True
    assert endpoint["url"].startswith("http://127.0.0.1:") and endpoint["models"] == [job_id]
    try:
        answer = cli("invoke", job_id, "Client Bob Chen, age 40, risk moderate, cash $5,000.", "--max-tokens", "8", "--json")
        assert answer.exit_code == 0, answer.output
        text = json.loads(answer.stdout)["choices"][0]["message"]["content"]
        streamed = cli("invoke", job_id, "Client Bob Chen, age 40, risk moderate, cash $5,000.", "--max-tokens", "8", "--stream")
        assert streamed.exit_code == 0 and streamed.stdout.strip() == text.strip()
        refused = cli("invoke", job_id, "x", "--max-tokens", "100000")
        assert refused.exit_code == 2 and "above this endpoint's cap of 1024" in refused.stderr
        again = cli("deploy", job_id, "--json")  # alive with the same model: re-attached, not a second server
        assert again.exit_code == 0 and json.loads(again.stdout)["reattached"] is True
        assert json.loads(again.stdout)["url"] == endpoint["url"]
        listed = cli("endpoints", "--json")
        assert [e["name"] for e in json.loads(listed.stdout)] == [job_id] and KEY not in listed.stdout
        assert KEY not in cli("endpoints").stdout
    finally:
        stopped = cli("undeploy", job_id, "--json")
    assert stopped.exit_code == 0 and json.loads(stopped.stdout)["state"] == "Stopped"
    assert json.loads(cli("endpoints", "--json").stdout)[0]["state"] == "Stopped"
    got = list(read_records(endpoint["capture"]))
    assert len(got) == 3 and sorted(r.status for r in got) == [200, 200, 400]  # flushed by the server's shutdown
    home = Path(os.environ["LAUNCHER_HOME"])
    for path in home.rglob("*"):
        if path.is_file() and path.name != "run.lock":
            assert KEY not in path.read_text(errors="replace"), path
    gone = cli("invoke", job_id, "hello")
    assert gone.exit_code == 2 and "not running" in gone.stderr


def test_deploy_bad_input_is_one_line_and_starts_nothing(tmp_path):
    import os
    from pathlib import Path

    missing = cli("deploy", str(tmp_path / "nowhere"))
    assert missing.exit_code == 2 and missing.stderr.startswith("Error: ") and missing.stderr.count("\n") == 1
    unknown = cli("deploy", "no-such-job-run1")
    assert unknown.exit_code == 2 and "no job 'no-such-job-run1'" in unknown.stderr
    assert "no model dir" in cli("deploy", str(tmp_path)).stderr
    (tmp_path / "config.json").write_text("{}")
    bad_name = cli("deploy", str(tmp_path), "--name", "Bad_Name")
    assert bad_name.exit_code == 2 and "endpoint name 'Bad_Name' is not valid" in bad_name.stderr
    assert cli("invoke", "ghost", "hi").exit_code == 2
    assert cli("undeploy", "ghost").exit_code == 2
    assert not (Path(os.environ["LAUNCHER_HOME"]) / "endpoints").exists()
    assert cli("endpoints").stdout.strip() == "No endpoints."


def test_a_server_that_cannot_start_fails_the_deploy_with_its_last_log_lines(tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parents[1]))
    (tmp_path / "adapter_config.json").write_text("{}")  # an adapter naming no base model
    failed = cli("deploy", str(tmp_path), "--name", "broken")
    assert failed.exit_code == 1
    assert "endpoint 'broken' did not start: the server process ended" in failed.stderr
    assert "names no base model" in failed.stderr  # the server's own last lines come first
    assert json.loads(cli("endpoints", "--json").stdout)[0]["state"] == "Failed"
