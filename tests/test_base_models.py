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


@pytest.fixture
def moto_s3(monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(port=0)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    yield
    server.stop()


def test_s3_prefix_is_downloaded_once_into_the_cache(moto_s3, tiny_llama_dir, tmp_path, monkeypatch):
    import boto3

    monkeypatch.setenv("LAUNCHER_CACHE", str(tmp_path / "cache"))
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="models")
    for path in tiny_llama_dir.iterdir():
        s3.upload_file(str(path), "models", f"bases/tiny/{path.name}")
    local = models.resolve("s3://models/bases/tiny")
    tokenizer = models.load_tokenizer(local)
    assert tokenizer.chat_template and sorted(p.name for p in __import__("pathlib").Path(local).iterdir()) == sorted(
        p.name for p in tiny_llama_dir.iterdir()
    )
    s3.delete_object(Bucket="models", Key="bases/tiny/config.json")
    assert models.resolve("s3://models/bases/tiny") == local  # cached: no second download
    with pytest.raises(NotFoundError, match="no objects under s3://models/nothing"):
        models.resolve("s3://models/nothing")


def test_gs_uri_reads_through_the_gcs_mount(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LAUNCHER_GCS_MOUNT", str(tmp_path / "gcs"))
    shutil.copytree(tiny_llama_dir, tmp_path / "gcs/bucket/bases/tiny")
    assert models.resolve("gs://bucket/bases/tiny") == str(tmp_path / "gcs/bucket/bases/tiny")


def test_gs_prefix_without_the_mount_is_downloaded_once_into_the_cache(tiny_llama_dir, tmp_path, monkeypatch):
    import socket

    from gcp_storage_emulator.server import create_server
    from google.cloud import storage

    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    server = create_server("localhost", port, in_memory=True)
    server.start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://localhost:{port}")
        monkeypatch.setenv("LAUNCHER_GCS_MOUNT", str(tmp_path / "no-mount"))
        monkeypatch.setenv("LAUNCHER_CACHE", str(tmp_path / "cache"))
        bucket = storage.Client(project="test").create_bucket("models")
        for path in tiny_llama_dir.iterdir():
            bucket.blob(f"bases/tiny/{path.name}").upload_from_filename(str(path))
        local = models.resolve("gs://models/bases/tiny")
        assert models.load_tokenizer(local).chat_template
        assert sorted(p.name for p in Path(local).iterdir()) == sorted(p.name for p in tiny_llama_dir.iterdir())
        bucket.blob("bases/tiny/config.json").delete()
        assert models.resolve("gs://models/bases/tiny") == local  # cached: no second download
        with pytest.raises(NotFoundError, match="no objects under gs://models/nothing"):
            models.resolve("gs://models/nothing")
    finally:
        server.stop()


def test_hub_token_comes_from_the_named_environment_variable(monkeypatch):
    config = TrainConfig(base_model="meta-llama/Meta-Llama-3-8B-Instruct", hf_token_env="MY_HF_TOKEN")
    monkeypatch.delenv("MY_HF_TOKEN", raising=False)
    assert models.hub_token(config) is None
    monkeypatch.setenv("MY_HF_TOKEN", "hf_abc")
    assert models.hub_token(config) == "hf_abc"
    assert models.resolve(config.base_model) == config.base_model  # a Hub id is passed to from_pretrained
    assert "hf_abc" not in str(config.to_hyperparameters())
