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


def job_id(spec: JobSpec, backend: str = "local", run_name: str = "run1") -> str:
    from launcher.data import content_digest

    digests = {name: content_digest(uri) for name, uri in spec.data.channels().items()}
    return spec.job_id(spec.identity(backend, digests), run_name)


def checkout(root, lines: int = 10, tags: str = "", extra: str = "") -> JobSpec:
    """The same project checked out at ``root``: a spec next to its data."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data/train.jsonl").write_text("".join(f'{{"prompt": "q{i}", "completion": "a{i}"}}\n' for i in range(lines)))
    return JobSpec.from_yaml(write(root, f"name: fin\ndata:\n  train: data/train.jsonl\n{tags}{extra}"))


def test_job_id_follows_what_defines_the_training_not_paths_tags_or_other_backends(tmp_path):
    first = checkout(tmp_path / "a")
    assert job_id(first) == job_id(checkout(tmp_path / "moved/elsewhere"))  # another checkout path: the same job
    assert job_id(first) == job_id(checkout(tmp_path / "b", tags="tags:\n  team: risk\n"))
    assert job_id(first) == job_id(checkout(tmp_path / "c", extra="vertex:\n  project: other\nsagemaker:\n  region: eu-west-1\n"))
    assert job_id(first) == job_id(checkout(tmp_path / "d", extra="training:\n  eval_samples: 3\n"))  # how it is scored
    # The data's content, the settings, the compute, the backend and its own section make a new job.
    assert job_id(first) != job_id(checkout(tmp_path / "e", lines=9))  # a user cut the file by a line
    assert job_id(first) != job_id(checkout(tmp_path / "f", extra="training:\n  epochs: 4\n"))
    assert job_id(first) != job_id(checkout(tmp_path / "g", extra="compute:\n  accelerator: H100:1\n"))
    assert job_id(first) != job_id(first, backend="sagemaker")
    assert job_id(first) != job_id(checkout(tmp_path / "h", extra="local:\n  device: cpu\n"))
    assert job_id(first, run_name="run2") != job_id(first)
    with pytest.raises(SpecError, match="run name"):
        job_id(first, run_name="Bad Name")


def test_job_id_leaves_room_for_an_attempt_suffix_in_sagemaker_names(tmp_path):
    spec = checkout(tmp_path).model_copy(update={"name": "a" * 40})
    longest = job_id(spec, run_name="r1201-235959")
    assert len(longest) <= 56 and len(f"{longest}-a999") <= 63
    assert longest.startswith("a" * 32 + "-r1201-235959-")


def test_a_local_base_model_counts_by_content_not_by_path(tmp_path):
    from launcher.spec import base_model_digest

    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text('{"hidden_size": 8}')
        (tmp_path / name / "model.safetensors").write_bytes(b"w" * (3 << 20))
    assert base_model_digest(str(tmp_path / "one")) == base_model_digest(str(tmp_path / "two"))
    (tmp_path / "two" / "config.json").write_text('{"hidden_size": 16}')
    assert base_model_digest(str(tmp_path / "one")) != base_model_digest(str(tmp_path / "two"))
    assert base_model_digest("meta-llama/Meta-Llama-3-8B") is None and base_model_digest("tiny-llama") is None


def test_settings_travel_without_defaults_and_with_a_schema_version():
    from launcher.spec import SCHEMA_VERSION, TrainConfig

    config = TrainConfig(lora_r=8, target_modules=["q_proj", "v_proj"], packing=False)
    wire = config.to_hyperparameters()
    assert wire == {"launcher_schema": str(SCHEMA_VERSION), "launcher_version": wire["launcher_version"], "lora_r": "8",
                    "target_modules": '["q_proj", "v_proj"]', "packing": "false"}
    assert config.to_args() == [f"--{k}={v}" for k, v in wire.items()]
    assert TrainConfig.from_mapping(wire) == config


def test_an_image_older_than_the_settings_refuses_them_in_one_line():
    from launcher.spec import SCHEMA_VERSION, TrainConfig

    with pytest.raises(SpecError) as caught:
        TrainConfig.from_mapping({"launcher_schema": str(SCHEMA_VERSION + 1), "launcher_version": "9.9.0", "lora_r": "8"})
    message = str(caught.value)
    assert f"schema {SCHEMA_VERSION + 1} (sent by launcher 9.9.0)" in message and "To fix: install launcher 9.9.0 in the training image" in message
    assert "\n" not in message


@pytest.mark.parametrize("training,message", [
    ({"fp8": "on", "fast_path": "off"}, "fp8: on runs on the GPU fast path"),
    ({"torch_compile": "layers", "fast_path": "off"}, "torch_compile: layers applies to the fast path"),
    ({"general_mix": 0.2}, "general_mix > 0 needs general text"),
])
def test_settings_that_cannot_run_are_refused_when_the_spec_is_validated(tmp_path, training, message):
    import json

    path = write(tmp_path, json.dumps({"name": "fin", "data": {"train": "t.jsonl"}, "training": training}))
    with pytest.raises(SpecError, match=message):
        JobSpec.from_yaml(path)


def test_qlora_with_fp8_is_refused_too_and_several_nodes_are_a_spec(tmp_path):
    with pytest.raises(SpecError, match="fp8: on multiplies a bf16 base in float8"):
        JobSpec.from_yaml(write(tmp_path, "name: f\nmethod: qlora\ndata:\n  train: t\ntraining:\n  fp8: on\n"))
    assert JobSpec.from_yaml(write(tmp_path, "name: f\ndata:\n  train: t\ncompute:\n  nodes: 2\n")).compute.nodes == 2


def test_train_config_carries_the_base_model_method_and_hyperparameters():
    spec = JobSpec(name="fin", base_model="meta-llama/Meta-Llama-3-8B", method="qlora", data={"train": "t"}, training={"lora_r": 8})
    config = spec.train_config()
    assert (config.base_model, config.method, config.lora_r, config.hf_token_env) == ("meta-llama/Meta-Llama-3-8B", "qlora", 8, "HF_TOKEN")


def test_generation_longer_than_a_training_row_is_a_spec_error():
    from launcher.spec import TrainConfig

    with pytest.raises(SpecError, match=r"max_new_tokens \(1024\) must be below max_seq_len \(1024\).*To fix: lower max_new_tokens"):
        TrainConfig.from_mapping({"max_new_tokens": "1024"})
    assert TrainConfig.from_mapping({"max_new_tokens": "1023"}).max_new_tokens == 1023


def test_remote_data_counts_by_its_objects_versions(moto_server, gcs_emulator):
    """s3:// and gs:// data: the objects' ETags / generations, read without downloading: rewriting the
    data makes a new job, re-reading it does not."""
    import boto3
    from google.cloud import storage

    from launcher.data import content_digest

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="data")
    s3.put_object(Bucket="data", Key="fin/train.jsonl", Body=b'{"prompt": "q", "completion": "a"}\n')
    first = content_digest("s3://data/fin/train.jsonl")
    assert first == content_digest("s3://data/fin/train.jsonl") == content_digest("s3://data/fin/")  # a file or its folder
    s3.put_object(Bucket="data", Key="fin/train.jsonl", Body=b'{"prompt": "q", "completion": "b"}\n')
    assert content_digest("s3://data/fin/train.jsonl") != first
    bucket = storage.Client().create_bucket("gdata")
    bucket.blob("export/training-0.jsonl").upload_from_string(b'{"prompt": "q", "completion": "a"}\n')
    before = content_digest("gs://gdata/export")
    bucket.blob("export/training-0.jsonl").upload_from_string(b'{"prompt": "q", "completion": "c"}\n')
    assert content_digest("gs://gdata/export") != before
    with pytest.raises(NotFoundError, match="no objects at s3://data/nothing"):
        content_digest("s3://data/nothing")
