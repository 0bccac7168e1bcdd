"""The job CLI verbs and `launcher init`: bad input fails with one line and exit 2, and stages nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from launcher.cli.main import app
from launcher.spec import ComputeSpec, DataSpec, Hyperparameters, JobSpec, LocalSection, SageMakerSection, VertexSection

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Question {i}?", "completion": f"Answer number {i}."}) + "\n" for i in range(8)))
    return path


def write_spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def jobs_dir() -> Path:
    from launcher.state import home

    return home() / "jobs"


def assert_bad_input(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert not jobs_dir().exists() or not any(jobs_dir().iterdir()), "something was staged"


# --- bad input ---------------------------------------------------------------------------------------
def test_missing_spec_file(tmp_path):
    assert_bad_input(invoke("train", str(tmp_path / "nope.yaml")), "nope.yaml' does not exist", "launcher init")


def test_unreadable_yaml(tmp_path):
    spec = write_spec(tmp_path, "name: a\ndata: [unclosed\n")
    assert_bad_input(invoke("train", str(spec)), "not valid YAML")


def test_wrong_types(tmp_path, data_file):
    spec = write_spec(tmp_path, f"name: a\ndata: {{train: {data_file}}}\ntraining: {{epochs: many}}\n")
    assert_bad_input(invoke("train", str(spec)), "training.epochs", "many")


def test_unknown_key_suggests_the_right_one(tmp_path, data_file):
    spec = write_spec(tmp_path, f"name: a\ndata: {{train: {data_file}}}\ntraning: {{epochs: 1}}\n")
    assert_bad_input(invoke("train", str(spec)), "unknown key 'traning'", "Did you mean 'training'")


def test_bad_accelerator(tmp_path, data_file):
    spec = write_spec(tmp_path, f"name: a\ndata: {{train: {data_file}}}\ncompute: {{accelerator: 'X100:1'}}\n")
    assert_bad_input(invoke("train", str(spec)), "compute.accelerator", "unknown GPU kind 'X100'")


def test_unknown_backend(tmp_path, data_file):
    spec = write_spec(tmp_path, f"name: a\ndata: {{train: {data_file}}}\n")
    assert_bad_input(invoke("train", str(spec), "--backend", "locl"), "unknown backend 'locl'", "Did you mean 'local'")


def test_missing_data_file(tmp_path):
    spec = write_spec(tmp_path, "name: a\ndata: {train: missing.jsonl}\n")
    assert_bad_input(invoke("train", str(spec)), "missing.jsonl' does not exist")


def test_invalid_data_line_names_file_and_line(tmp_path, data_file):
    with data_file.open("a") as handle:
        handle.write('{"prompt": "only a prompt"\n')
    spec = write_spec(tmp_path, f"name: a\ndata: {{train: {data_file}}}\n")
    assert_bad_input(invoke("train", str(spec)), f"{data_file}:9: not valid JSON")


def test_remote_data_on_the_local_backend(tmp_path):
    spec = write_spec(tmp_path, "name: a\ndata: {train: 's3://bucket/train.jsonl'}\n")
    assert_bad_input(invoke("train", str(spec)), "local backend reads local files only")


def test_multi_node_on_the_local_backend(tmp_path, data_file):
    spec = write_spec(tmp_path, f"name: a\ndata: {{train: {data_file}}}\ncompute: {{nodes: 2}}\n")
    assert_bad_input(invoke("train", str(spec)), "the 'local' backend does not support multi-node training", "To fix: set compute.nodes to 1")


def test_gpus_beyond_what_this_machine_has_or_a_step_they_cannot_split_are_refused(tmp_path, data_file, monkeypatch):
    spec = write_spec(tmp_path, f"name: a\ndata: {{train: {data_file}}}\n")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # whatever this machine has, its processes see no GPU
    assert_bad_input(invoke("train", str(spec), "--gpus", "2"), "--gpus 2: this machine has no visible GPU", "To fix: drop --gpus")
    assert_bad_input(invoke("train", str(spec), "--gpus", "2", "--backend", "sagemaker", "--dry-run"),
                     "--gpus applies to the local backend", "To fix: set compute.accelerator")
    from launcher.backends import local

    monkeypatch.setattr(local, "visible_gpus", lambda: 8)  # an 8-GPU machine
    assert_bad_input(invoke("train", str(spec), "--gpus", "3"), "16 rows cannot be split evenly over 3 processes")



def test_a_job_that_does_not_fit_the_gpu(tmp_path, data_file):
    spec = write_spec(
        tmp_path,
        f"name: a\nbase_model: meta-llama/Llama-3.1-70B\ndata: {{train: {data_file}}}\ncompute: {{accelerator: 'A10G:1'}}\n",
    )
    assert_bad_input(invoke("train", str(spec)), "GiB per GPU but an A10G has", "To fix:")


def test_bad_run_name(tmp_path, data_file):
    spec = write_spec(tmp_path, f"name: a\ndata: {{train: {data_file}}}\n")
    assert_bad_input(invoke("train", str(spec), "--run-name", "Run_1"), "run name 'Run_1'")


@pytest.mark.parametrize("verb", [["status"], ["logs"], ["logs", "-f"], ["cancel"]])
def test_unknown_job_id(verb):
    assert_bad_input(invoke(*verb, "nope-run1-00000000"), "no job 'nope-run1-00000000'", "launcher list")


def test_unknown_state_filter():
    assert_bad_input(invoke("list", "--state", "runing"), "unknown job state 'runing'", "Did you mean 'RUNNING'")


def test_list_when_there_are_no_jobs():
    assert invoke("list").stdout.strip() == "No jobs."
    assert json.loads(invoke("list", "--json").stdout) == []


# --- launcher init -----------------------------------------------------------------------------------
def test_init_writes_a_spec_that_loads_and_runs(tmp_path):
    path = tmp_path / "job.yaml"
    result = invoke("init", str(path))
    assert result.exit_code == 0
    text = path.read_text()
    assert text.startswith(f"# Run it:  launcher train {path}\n")
    spec = JobSpec.from_yaml(path)
    assert spec.name == "my-first-job" and spec.data.train == str(tmp_path / "data" / "train.jsonl")


def test_init_shows_every_key_with_a_comment(tmp_path):
    path = tmp_path / "job.yaml"
    invoke("init", str(path))
    values = yaml.safe_load(path.read_text())
    sections = {
        "data": DataSpec,
        "training": Hyperparameters,
        "compute": ComputeSpec,
        "local": LocalSection,
        "sagemaker": SageMakerSection,
        "vertex": VertexSection,
    }
    assert list(values) == list(JobSpec.model_fields)
    for section, model in sections.items():
        assert list(values[section]) == list(model.model_fields), section
    # The example shows the defaults: loading it gives the same spec as the two required keys alone.
    spec = JobSpec.from_yaml(path)
    assert spec == JobSpec(name=spec.name, data={"train": spec.data.train})
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and not line.rstrip().endswith(":"):
            assert " # " in line, f"no comment on: {line}"


def test_init_refuses_to_overwrite_without_force(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("mine\n")
    result = invoke("init", str(path))
    assert result.exit_code == 2
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert path.read_text() == "mine\n"
    assert invoke("init", str(path), "--force").exit_code == 0
    assert JobSpec.from_yaml(path).name == "my-first-job"
