"""The example domain dataset and job specs in examples/: reproducible, valid, and honest about facts."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from launcher.data import load_examples, validate_dataset
from launcher.spec import JobSpec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _make_dataset():
    spec = importlib.util.spec_from_file_location("make_dataset", EXAMPLES / "make_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_regenerates_the_committed_files_byte_for_byte(tmp_path):
    _make_dataset().main(["--out", str(tmp_path)])
    for name in ("train.jsonl", "eval.jsonl"):
        assert (tmp_path / name).read_bytes() == (EXAMPLES / "data" / name).read_bytes(), name


def test_dataset_is_large_enough_clean_and_split_without_overlap():
    train, eval_ = validate_dataset(EXAMPLES / "data" / "train.jsonl", EXAMPLES / "data" / "eval.jsonl")
    assert train.ok and eval_.ok
    assert train.examples >= 1000 and 100 <= eval_.examples <= 150
    assert train.formats == eval_.formats == ["messages"]
    assert train.duplicates == eval_.duplicates == 0
    assert eval_.overlap_with_train == 0
    assert train.warnings == [] and eval_.warnings == []


def test_summaries_are_short_and_use_only_the_facts_in_the_prompt():
    examples = load_examples(EXAMPLES / "data" / "train.jsonl") + load_examples(EXAMPLES / "data" / "eval.jsonl")
    for example in examples:
        (role, system), (_, user), (_, answer) = example.messages
        assert role == "system"
        assert 30 <= len(answer.split()) <= 80, example.line
        headings = [line.split(" ", 1)[0] for line in answer.splitlines()]
        assert headings == ["Summary", "Holdings:", "Goals:", "Changes:", "Next"], example.line
        # Every figure in the summary (amounts, ages, years) is one the client sheet gives.
        for figure in re.findall(r"\$\d{1,3}(?:,\d{3})*|\b\d+\b", answer):
            assert figure in user, (example.source, example.line, figure)
        name = user.splitlines()[0].removeprefix("Client: ")
        assert answer.startswith(f"Summary for {name}, ")


def test_job_specs_load_and_start_with_the_command_that_runs_them():
    demo = JobSpec.from_yaml(EXAMPLES / "fin-summary.yaml")
    assert demo.base_model == "tiny-llama" and demo.compute.accelerator is None
    assert Path(demo.data.train) == EXAMPLES / "data" / "train.jsonl"
    assert (EXAMPLES / "fin-summary.yaml").read_text().splitlines()[0] == (
        "# launcher train examples/fin-summary.yaml --backend local"
    )
    big = JobSpec.from_yaml(EXAMPLES / "fin-summary-8b.yaml")
    assert (big.base_model, big.method, str(big.compute.accelerator), big.compute.spot) == (
        "meta-llama/Meta-Llama-3-8B-Instruct",
        "qlora",
        "H100:1",
        True,
    )
    assert (EXAMPLES / "fin-summary-8b.yaml").read_text().startswith("# launcher plan examples/fin-summary-8b.yaml\n")


def test_every_line_is_one_json_object_with_a_system_prompt():
    first = json.loads((EXAMPLES / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]


def test_smollm2_spec_names_the_linked_gguf_relative_to_itself():
    spec = JobSpec.from_yaml(EXAMPLES / "fin-summary-smollm2.yaml")
    assert Path(spec.base_model) == EXAMPLES / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"  # `make setup` links it
    assert (spec.method, spec.training.max_steps, spec.compute.accelerator) == ("lora", 80, None)
    assert (EXAMPLES / "fin-summary-smollm2.yaml").read_text().startswith(
        "# launcher train examples/fin-summary-smollm2.yaml --backend local\n"
    )


def test_the_sagemaker_example_dry_runs_against_moto(moto_server, monkeypatch):
    import boto3
    from typer.testing import CliRunner

    from launcher.cli.main import app

    assert (EXAMPLES / "fin-summary-sagemaker.yaml").read_text().startswith(
        "# launcher train examples/fin-summary-sagemaker.yaml --backend sagemaker\n")
    boto3.client("s3").create_bucket(Bucket="demo-bucket")
    monkeypatch.setenv("LAUNCHER_SAGEMAKER_ROLE_ARN", "arn:aws:iam::123456789012:role/launcher")
    monkeypatch.setenv("LAUNCHER_SAGEMAKER_BUCKET", "demo-bucket")
    monkeypatch.setenv("LAUNCHER_SAGEMAKER_SCRIPT_IMAGE", "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.8.0-gpu-py312")
    result = CliRunner().invoke(app, ["train", str(EXAMPLES / "fin-summary-sagemaker.yaml"), "--backend", "sagemaker", "--dry-run", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)["request"]["CreateTrainingJob"]
    assert body["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge" and body["EnableManagedSpotTraining"] is True
    assert body["HyperParameters"]["sagemaker_program"] == "launcher_train.py"
    assert boto3.client("s3").list_objects_v2(Bucket="demo-bucket").get("KeyCount", 0) == 0  # nothing staged


def test_the_vertex_example_dry_runs_without_staging(gcs_emulator, monkeypatch):
    from typer.testing import CliRunner

    from launcher import clouds
    from launcher.cli.main import app

    assert (EXAMPLES / "fin-summary-vertex.yaml").read_text().startswith("# launcher train examples/fin-summary-vertex.yaml --backend vertex\n")
    clouds.gcs_client().create_bucket("demo-bucket")
    monkeypatch.setenv("LAUNCHER_VERTEX_PROJECT", "test-project")
    monkeypatch.setenv("LAUNCHER_VERTEX_BUCKET", "demo-bucket")
    result = CliRunner().invoke(app, ["train", str(EXAMPLES / "fin-summary-vertex.yaml"), "--backend", "vertex", "--dry-run", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)["request"]["CreateCustomJob"]["custom_job"]
    (pool,) = job["job_spec"]["worker_pool_specs"]
    assert pool["machine_spec"]["accelerator_type"] == "NVIDIA_L4" and job["job_spec"]["scheduling"]["strategy"] == "SPOT"
    assert list(clouds.gcs_client().list_blobs("demo-bucket")) == []  # nothing staged
