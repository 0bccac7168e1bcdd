"""The job spec: YAML in and out, strict keys with hints, accelerator and duration parsing, stable job ids."""

from __future__ import annotations

import pytest

from launcher.errors import NotFoundError, SpecError
from launcher.spec import Accelerator, JobSpec


def write(tmp_path, text: str):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_yaml_round_trip_resolves_data_paths_next_to_the_spec(tmp_path):
    path = write(tmp_path, "name: fin\nbase_model: tiny-llama\ndata:\n  train: data/train.jsonl\n  eval: s3://b/eval.jsonl\n"
                           "training:\n  learning_rate: 1e-4\n  target_modules: q_proj,v_proj\ncompute:\n  accelerator: h100:2\n  max_runtime: 90m\n")
    spec = JobSpec.from_yaml(path)
    assert spec.data.train == str(tmp_path / "data/train.jsonl") and spec.data.eval == "s3://b/eval.jsonl"
    assert spec.training.learning_rate == 1e-4  # YAML reads 1e-4 as a string; the spec coerces it
    assert spec.training.target_modules == ["q_proj", "v_proj"]
    assert spec.compute.accelerator == Accelerator(kind="H100", count=2) and spec.compute.max_runtime == 5400
    again = JobSpec.model_validate(__import__("yaml").safe_load(spec.to_yaml()))
    assert again == spec


def test_bare_yaml_on_and_off_are_the_switch_values_not_booleans(tmp_path):
    # YAML 1.1 reads on/off as true/false; the on/off settings take them as written.
    path = write(tmp_path, "name: fin\ndata:\n  train: t.jsonl\ntraining:\n  gradient_checkpointing: off\n  fast_path: on\n  fp8: off\n")
    training = JobSpec.from_yaml(path).training
    assert (training.gradient_checkpointing, training.fast_path, training.fp8) == ("off", "on", "off")


@pytest.mark.parametrize(
    "text,message",
    [
        ("name: x\ndata: {train: a}\ntraining: {epoch: 2}\n", "unknown key 'training.epoch'. Did you mean 'epochs'?"),
        ("name: x\ndata: {train: a}\ncompute: {acelerator: H100}\n", "unknown key 'compute.acelerator'. Did you mean 'accelerator'?"),
        ("name: x\ndata: {train: a}\ncompute: {accelerator: 'B300:1'}\n", "unknown GPU kind 'B300'"),
        ("name: x\ndata: {train: a}\ncompute: {accelerator: 'H100:two'}\n", "is not KIND[:COUNT]"),
        ("name: x\ndata: {train: a}\ntraining: {lora_r: many}\n", "'training.lora_r' = 'many' is not valid"),
        ("name: x\n", "missing required key 'data'"),
        ("name: Big Job\ndata: {train: a}\n", "'name' = 'Big Job' is not valid"),
        ("name: x\ndata: a: b\n", "job.yaml:2: not valid YAML (mapping values are not allowed here)"),
        ("- just\n- a list\n", "a job spec is a YAML mapping"),
    ],
)
def test_bad_specs_are_one_clear_line(tmp_path, text, message):
    with pytest.raises(SpecError) as info:
        JobSpec.from_yaml(write(tmp_path, text))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_missing_spec_file(tmp_path):
    with pytest.raises(NotFoundError, match="launcher init"):
        JobSpec.from_yaml(tmp_path / "nope.yaml")


def test_job_id_is_stable_and_changes_with_the_spec_or_the_run_name():
    spec = JobSpec(name="fin", data={"train": "/d/train.jsonl"})
    assert spec.job_id() == JobSpec(name="fin", data={"train": "/d/train.jsonl"}).job_id()
    assert spec.job_id().startswith("fin-run1-") and len(spec.job_id()) <= 63
    assert spec.job_id("run2") != spec.job_id()
    changed = spec.model_copy(update={"training": spec.training.model_copy(update={"epochs": 4})})
    assert changed.job_id() != spec.job_id()
    with pytest.raises(SpecError, match="run name"):
        spec.job_id("Bad Name")


def test_train_config_carries_the_base_model_method_and_hyperparameters():
    spec = JobSpec(name="fin", base_model="meta-llama/Meta-Llama-3-8B", method="qlora", data={"train": "t"}, training={"lora_r": 8})
    config = spec.train_config()
    assert (config.base_model, config.method, config.lora_r, config.hf_token_env) == ("meta-llama/Meta-Llama-3-8B", "qlora", 8, "HF_TOKEN")


def test_generation_longer_than_a_training_row_is_a_spec_error():
    from launcher.spec import TrainConfig

    with pytest.raises(SpecError, match=r"max_new_tokens \(1024\) must be below max_seq_len \(1024\).*To fix: lower max_new_tokens"):
        TrainConfig.from_mapping({"max_new_tokens": "1024"})
    assert TrainConfig.from_mapping({"max_new_tokens": "1023"}).max_new_tokens == 1023
