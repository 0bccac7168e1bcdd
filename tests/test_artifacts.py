"""A job's model dir as a local folder, wherever it ran: a local folder, SageMaker's model.tar.gz in S3
(moto's server), an S3 prefix, a Cloud Storage prefix or archive (gcp-storage-emulator). Each download
is cached by the objects' identity, atomic, and refuses archives that would write outside the folder."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from launcher import artifacts, clouds
from launcher.errors import BackendError, NotFoundError
from launcher.report import resolve_model_dir


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def sagemaker_tarball(model: Path, **replace: bytes) -> bytes:
    """model.tar.gz as SageMaker uploads /opt/ml/model: gzip-compressed, the files at the archive root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(model.iterdir()):
            if path.name not in replace:
                tar.add(path, arcname=path.name)
        for name, data in replace.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def count_gets(s3) -> list[str]:
    """The keys of every GetObject the client sends from now on."""
    keys: list[str] = []
    s3.meta.events.register("before-parameter-build.s3.GetObject", lambda **kwargs: keys.append(kwargs["params"]["Key"]))
    return keys


def cached_versions() -> list[Path]:
    """Every downloaded version folder in the (per-test) cache; hidden temporary folders do not count."""
    root = artifacts.cache_root() / "remote"
    folders = [version for uri in root.iterdir() for version in uri.iterdir()] if root.is_dir() else []
    return [folder for folder in folders if folder.is_dir() and not folder.name.startswith(".")]


@pytest.fixture
def job_model(finished_job) -> Path:
    """What a real training job wrote: metrics.json, the peft adapter, samples, manifest, ..."""
    model = finished_job / "model"
    assert {"metrics.json", "adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in model.iterdir()}
    return model


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LAUNCHER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_local_model_dir_is_returned_as_is(job_model, tmp_path):
    assert artifacts.model_dir(str(job_model)) == job_model
    with pytest.raises(NotFoundError, match=r"model dir '.*nowhere' is not a folder. To fix: check the URI"):
        artifacts.model_dir(str(tmp_path / "nowhere"))


def test_sagemaker_model_tar_gz_is_unpacked_once_per_version(moto_server, job_model, cache):
    s3 = clouds.aws_client("s3")
    s3.create_bucket(Bucket="out")
    uri = "s3://out/fin-summary-run1-0a1b2c3d/output/model.tar.gz"
    s3.put_object(Bucket="out", Key=uri.removeprefix("s3://out/"), Body=sagemaker_tarball(job_model))
    gets = count_gets(s3)

    local = artifacts.model_dir(uri)
    assert local.is_relative_to(cache) and tree(local) == tree(job_model)
    assert resolve_model_dir(str(local)).metrics == json.loads((job_model / "metrics.json").read_text())
    assert artifacts.model_dir(uri) == local and len(gets) == 1  # a re-run downloads nothing

    metrics = json.dumps({"schema": 1, "quality": {"tuned": {"rougeL": 99.0}}}).encode()
    s3.put_object(Bucket="out", Key=uri.removeprefix("s3://out/"), Body=sagemaker_tarball(job_model, **{"metrics.json": metrics}))
    newer = artifacts.model_dir(uri)
    assert newer != local and (newer / "metrics.json").read_bytes() == metrics and len(gets) == 2
    assert cached_versions() == [newer]  # the new object replaced the old one in the cache


def test_s3_prefix_is_downloaded_with_keys_relative_to_it(moto_server, job_model, cache):
    s3 = clouds.aws_client("s3")
    s3.create_bucket(Bucket="out")
    for path in job_model.iterdir():
        s3.upload_file(str(path), "out", f"jobs/run1/model/{path.name}")
    s3.put_object(Bucket="out", Key="jobs/run1/model/checkpoints/step-5/complete.json", Body=b"{}")
    s3.put_object(Bucket="out", Key="jobs/run1/model-old/metrics.json", Body=b"{}")  # a sibling prefix: not part of it
    local = artifacts.model_dir("s3://out/jobs/run1/model")
    assert tree(local) == {**tree(job_model), "checkpoints/step-5/complete.json": b"{}"}
    gets = count_gets(s3)
    assert artifacts.model_dir("s3://out/jobs/run1/model/") == local and gets == []


def test_missing_objects_are_not_found_with_the_fix(moto_server, gcs_emulator, cache):
    clouds.aws_client("s3").create_bucket(Bucket="out")
    clouds.gcs_client().create_bucket("out")
    for uri, shown in [
        ("s3://out/job/output/model.tar.gz", r"s3://out/job/output/model.tar.gz does not exist \(404"),
        ("s3://out/job/model", r"no objects under s3://out/job/model"),
        ("s3://no-bucket/job/model", r"s3://no-bucket/job/model/ does not exist \(NoSuchBucket"),
        ("gs://out/job/model.tar.gz", r"gs://out/job/model.tar.gz does not exist"),
        ("gs://out/job/model", r"no objects under gs://out/job/model"),
    ]:
        with pytest.raises(NotFoundError, match=shown + r".*To fix: check the URI \('launcher status JOB'"):
            artifacts.model_dir(uri)
    assert cached_versions() == []


def test_access_denied_names_the_permission(moto_server, cache):
    """S3 answers 403 (a real response through botocore's own event hook: moto enforces no IAM)."""
    from botocore.awsrequest import AWSResponse

    class Body:
        def stream(self):
            yield b""

    s3 = clouds.aws_client("s3")
    s3.meta.events.register("before-send.s3.HeadObject", lambda request, **kwargs: AWSResponse(request.url, 403, {}, Body()))
    with pytest.raises(BackendError, match=r"AWS denied access to s3://out/model.tar.gz \(403.*To fix: grant s3:GetObject"):
        artifacts.model_dir("s3://out/model.tar.gz")


def test_a_failed_download_leaves_nothing_that_counts(moto_server, job_model, cache, monkeypatch):
    from botocore.exceptions import ConnectionClosedError

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3 = clouds.aws_client("s3")
    s3.create_bucket(Bucket="out")
    for path in job_model.iterdir():
        s3.upload_file(str(path), "out", f"model/{path.name}")
    gets = count_gets(s3)

    def drop_the_third(request, **kwargs):
        if len(gets) == 3:
            raise ConnectionClosedError(endpoint_url=request.url)

    s3.meta.events.register("before-send.s3.GetObject", drop_the_third)
    with pytest.raises(BackendError, match=r"cannot reach AWS for s3://out/model/.*To fix: check the network"):
        artifacts.model_dir("s3://out/model")
    assert cached_versions() == []
    s3.meta.events.unregister("before-send.s3.GetObject", drop_the_third)
    local = artifacts.model_dir("s3://out/model")
    assert tree(local) == tree(job_model)
    assert sorted(p.name for p in local.parent.iterdir()) == [".lock", local.name]  # no temporary folder left


@pytest.mark.parametrize(
    "member, shown",
    [
        ("../escaped.txt", "holds '../escaped.txt', a path outside the model folder; nothing was unpacked"),
        ("/tmp/absolute.txt", "holds '/tmp/absolute.txt', a path outside the model folder; nothing was unpacked"),
        ("link", "refusing to unpack it"),  # a symlink pointing outside: tarfile's data filter
    ],
)
def test_an_archive_that_writes_outside_the_folder_is_refused(member, shown, moto_server, cache, tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        ok = tarfile.TarInfo("metrics.json")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"{}"))
        info = tarfile.TarInfo(member)
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    s3 = clouds.aws_client("s3")
    s3.create_bucket(Bucket="out")
    s3.put_object(Bucket="out", Key="model.tar.gz", Body=buffer.getvalue())
    with pytest.raises(BackendError, match=f"s3://out/model.tar.gz.*{shown}.*To fix:"):
        artifacts.model_dir("s3://out/model.tar.gz")
    assert cached_versions() == []
    assert not (cache / "remote" / "escaped.txt").exists() and not list(cache.rglob("escaped.txt"))


def test_gcs_prefix_and_archive_are_downloaded_once(gcs_emulator, job_model, cache):
    bucket = clouds.gcs_client().create_bucket("vertex-out")
    for path in job_model.iterdir():  # Vertex AI writes the model dir under AIP_MODEL_DIR, file by file
        bucket.blob(f"jobs/run1/model/{path.name}").upload_from_filename(str(path))
    bucket.blob("jobs/run1/model.tar.gz").upload_from_string(sagemaker_tarball(job_model))
    media: list[str] = []
    clouds.gcs_client()._http.hooks["response"].append(
        lambda response, *args, **kwargs: media.append(response.url) if "alt=media" in response.url else None
    )

    local = artifacts.model_dir("gs://vertex-out/jobs/run1/model")
    assert tree(local) == tree(job_model) and len(media) == len(tree(job_model))
    assert artifacts.model_dir("gs://vertex-out/jobs/run1/model") == local and len(media) == len(tree(job_model))
    unpacked = artifacts.model_dir("gs://vertex-out/jobs/run1/model.tar.gz")
    assert unpacked != local and tree(unpacked) == tree(job_model)

    bucket.blob("jobs/run1/model/metrics.json").upload_from_string(b'{"schema": 1}')  # a new generation
    newer = artifacts.model_dir("gs://vertex-out/jobs/run1/model")
    assert newer != local and (newer / "metrics.json").read_bytes() == b'{"schema": 1}'
    assert not local.exists()


def test_the_emulator_keeps_cloud_storages_write_preconditions(gcs_emulator):
    """tests/fakes/gcs.py: a create-only write of an existing object fails as on Cloud Storage."""
    from google.api_core import exceptions

    from launcher import clouds

    clouds.gcs_client().create_bucket("pre")
    blob = clouds.gcs_client().bucket("pre").blob("claim")
    blob.upload_from_string("first", if_generation_match=0)
    with pytest.raises(exceptions.PreconditionFailed):
        blob.upload_from_string("second", if_generation_match=0)
    blob.reload()
    blob.upload_from_string("third", if_generation_match=blob.generation)  # the current generation: allowed
    assert blob.download_as_text() == "third"
