"""Where the base model comes from: tiny-llama, a local folder, s3:// (moto server), gs:// (the /gcs
mount, or gcp-storage-emulator without it), a Hub id with its token read from the named environment
variable."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from entrypoints import models
from launcher.errors import NotFoundError
from launcher.spec import TrainConfig


def test_tiny_llama_is_reproducible(tmp_path, tiny_llama_dir):
    from entrypoints import tiny_llama

    again = tiny_llama.materialize(tmp_path)
    assert tiny_llama.digest(again) == tiny_llama.digest(tiny_llama_dir)
    assert models.resolve("tiny-llama") == str(tiny_llama_dir)


def test_local_folder(tiny_llama_dir, tmp_path):
    assert models.resolve(str(tiny_llama_dir)) == str(tiny_llama_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match="has no config.json"):
        models.resolve(str(tmp_path / "empty"))


def test_s3_prefix_is_downloaded_once_into_the_cache(moto_server, tiny_llama_dir, tmp_path, monkeypatch):
    from launcher import clouds

    monkeypatch.setenv("LAUNCHER_CACHE", str(tmp_path / "cache"))
    s3 = clouds.aws_client("s3")
    s3.create_bucket(Bucket="models")
    for path in tiny_llama_dir.iterdir():
        s3.upload_file(str(path), "models", f"bases/tiny/{path.name}")
    s3.put_object(Bucket="models", Key="bases/tiny-other/config.json", Body=b"{}")  # a sibling prefix, not part of it
    gets = []
    s3.meta.events.register("before-parameter-build.s3.GetObject", lambda **kwargs: gets.append(kwargs["params"]["Key"]))
    local = models.resolve("s3://models/bases/tiny")
    assert models.load_tokenizer(local).chat_template
    assert sorted(p.name for p in Path(local).iterdir()) == sorted(p.name for p in tiny_llama_dir.iterdir())
    assert len(gets) == len(list(tiny_llama_dir.iterdir()))
    assert models.resolve("s3://models/bases/tiny/") == local  # cached: no second download
    assert len(gets) == len(list(tiny_llama_dir.iterdir()))
    with pytest.raises(NotFoundError, match="no objects under s3://models/nothing. To fix:"):
        models.resolve("s3://models/nothing")


def test_gs_uri_reads_through_the_gcs_mount(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LAUNCHER_GCS_MOUNT", str(tmp_path / "gcs"))
    shutil.copytree(tiny_llama_dir, tmp_path / "gcs/bucket/bases/tiny")
    assert models.resolve("gs://bucket/bases/tiny") == str(tmp_path / "gcs/bucket/bases/tiny")


def test_gs_prefix_without_the_mount_is_downloaded_once_into_the_cache(gcs_emulator, tiny_llama_dir, tmp_path, monkeypatch):
    from launcher import clouds

    monkeypatch.setenv("LAUNCHER_GCS_MOUNT", str(tmp_path / "no-mount"))
    monkeypatch.setenv("LAUNCHER_CACHE", str(tmp_path / "cache"))
    bucket = clouds.gcs_client().create_bucket("models")
    for path in tiny_llama_dir.iterdir():
        bucket.blob(f"bases/tiny/{path.name}").upload_from_filename(str(path))
    media: list[str] = []  # every object download the storage client makes
    clouds.gcs_client()._http.hooks["response"].append(lambda r, *a, **k: media.append(r.url) if "alt=media" in r.url else None)
    local = models.resolve("gs://models/bases/tiny")
    assert models.load_tokenizer(local).chat_template
    assert sorted(p.name for p in Path(local).iterdir()) == sorted(p.name for p in tiny_llama_dir.iterdir())
    assert len(media) == len(list(tiny_llama_dir.iterdir()))
    assert models.resolve("gs://models/bases/tiny") == local
    assert len(media) == len(list(tiny_llama_dir.iterdir()))  # cached: no second download
    with pytest.raises(NotFoundError, match="no objects under gs://models/nothing. To fix:"):
        models.resolve("gs://models/nothing")


def test_hub_token_comes_from_the_named_environment_variable(monkeypatch):
    config = TrainConfig(base_model="meta-llama/Meta-Llama-3-8B-Instruct", hf_token_env="MY_HF_TOKEN")
    monkeypatch.delenv("MY_HF_TOKEN", raising=False)
    assert models.hub_token(config) is None
    monkeypatch.setenv("MY_HF_TOKEN", "hf_abc")
    assert models.hub_token(config) == "hf_abc"
    assert models.resolve(config.base_model) == config.base_model  # a Hub id is passed to from_pretrained
    assert "hf_abc" not in str(config.to_hyperparameters())


# --- .gguf files (the real conversion is in test_smollm2.py) --------------------------------------------
def test_missing_gguf_file_is_one_clear_line_and_exit_2(make_job, capsys, tmp_path):
    missing = tmp_path / "models" / "nope.gguf"
    with pytest.raises(NotFoundError, match=r"base model file '.*nope.gguf' does not exist. To fix: check the path"):
        models.resolve(str(missing))
    from entrypoints import train

    root = make_job(hp={"base_model": str(missing)})
    assert train.main(["--root", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"Error: base model file '{missing}' does not exist. To fix: check the path (a .gguf base_model is a local file)"]
    assert not (root / "model").exists()


def test_file_that_is_not_gguf_is_refused(tmp_path):
    from launcher.errors import SpecError

    fake = tmp_path / "weights.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(SpecError, match="is not a GGUF file .* To fix: point base_model at a .gguf file"):
        models.resolve(str(fake))
    assert not list((models.cache_root() / "gguf").glob("weights*"))  # nothing converted, nothing left behind


def test_gguf_without_the_gguf_package_names_the_extra(tmp_path, monkeypatch):
    import sys

    from launcher import plan
    from launcher.errors import MissingExtraError

    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF\x03\x00\x00\x00")
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` raises ImportError
    for read in (models.resolve, plan.find_model):
        with pytest.raises(MissingExtraError, match=r"needs the Python package 'gguf'.*To fix: pip install \"launcher\[train\]\""):
            read(str(fake))


def test_plan_of_a_missing_gguf_exits_2(tmp_path):
    from typer.testing import CliRunner

    from launcher.cli.main import app

    spec = tmp_path / "job.yaml"
    spec.write_text("name: smol\nbase_model: models/smol.gguf\ndata:\n  train: train.jsonl\n")
    (tmp_path / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    result = CliRunner().invoke(app, ["plan", str(spec), "--tokens", "1000"], catch_exceptions=False)
    assert result.exit_code == 2
    assert result.stderr == f"Error: base model file '{tmp_path / 'models/smol.gguf'}' does not exist. To fix: check the path (a .gguf base_model is a local file)\n"


def test_relative_gguf_path_in_a_spec_is_relative_to_the_spec_file(tmp_path, monkeypatch):
    from launcher.spec import JobSpec

    (tmp_path / "jobs").mkdir()
    spec = tmp_path / "jobs" / "job.yaml"
    spec.write_text("name: smol\nbase_model: ../models/smol.gguf\ndata:\n  train: train.jsonl\n")
    monkeypatch.chdir(tmp_path)
    assert JobSpec.from_yaml(spec).base_model == str(tmp_path / "jobs" / "../models/smol.gguf")
    spec.write_text("name: smol\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\ndata:\n  train: train.jsonl\n")
    assert JobSpec.from_yaml(spec).base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"  # a Hub id is left alone
