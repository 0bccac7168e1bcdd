"""A training job's model dir as a local folder, wherever the job ran.

``model_dir(uri)`` takes what a backend reports as a job's output and returns a folder holding what
the job wrote (``metrics.json``, the adapter, ``samples.jsonl``, ...):

* a local folder (the local backend): returned as is;
* ``s3://bucket/.../output/model.tar.gz`` (what SageMaker delivers: ``/opt/ml/model`` packed with its
  files at the archive's root), or any ``.tar.gz`` / ``.tgz`` / ``.tar`` object in S3 or Cloud
  Storage: downloaded and unpacked into the cache;
* an ``s3://`` or ``gs://`` prefix (Vertex AI's ``AIP_MODEL_DIR``, a base model folder): every object
  under it downloaded into the cache, keys relative to the prefix.

``fetch(uri)`` is the remote half, which ``entrypoints.models`` also uses for ``s3://`` and ``gs://``
base models: there is one download path, not two.

Decisions:

* **Keyed by the objects' identity**, not by the URI: the S3 ETag or GCS generation of the archive, or
  of every object under the prefix. A re-run costs one HEAD or LIST and downloads nothing; an object
  replaced under the same name is a new key, downloaded into a new folder, and older versions of the
  same URI are removed from the cache once the new one is in place. (An object replaced during a
  download lands in a folder keyed by its old identity; the next call lists the new one and downloads
  it again, so the cache heals itself.)
* **Atomic**: the download and unpacking happen in a hidden temporary folder that is renamed into place
  (``state.atomic_folder``), under a per-URI lock, so a crash leaves nothing that counts and two
  processes asking for the same URI download it once. The lock holder removes stale temporary folders.
* **Safe extraction**: members with an absolute path or ``..`` are refused before anything is written,
  and ``tarfile``'s ``data`` filter refuses links out of the folder, device files and the like.
* **Errors at the border**: every SDK call runs inside ``clouds.aws_errors`` / ``clouds.google_errors``,
  so a missing object is ``NotFoundError`` and a refusal a ``BackendError`` naming the permission.

Layout: ``$LAUNCHER_CACHE/remote/<sha256(uri)[:16]>/<sha256(identity)[:16]>/``.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from launcher import clouds
from launcher.errors import BackendError, NotFoundError, SpecError
from launcher.state import atomic_folder, cache_root, file_lock

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
SCHEMES = ("s3", "gs")
MISSING = "check the URI ('launcher status JOB' shows where a job wrote its model) and that the job has finished"


def model_dir(uri: str) -> Path:
    """The model dir at ``uri`` (a local folder, an ``s3://``/``gs://`` prefix or archive) as a local folder."""
    if "://" not in uri:
        path = Path(uri).expanduser()
        if not path.is_dir():
            raise NotFoundError(f"model dir '{uri}' is not a folder. To fix: {MISSING}")
        return path
    return fetch(uri)


def fetch(uri: str) -> Path:
    """The archive or prefix at an ``s3://`` or ``gs://`` URI, unpacked or downloaded into the cache
    once per version of its objects (see the module docstring)."""
    scheme, bucket, key = _parse(uri)
    store = _S3(bucket) if scheme == "s3" else _GCS(bucket)
    canonical = f"{scheme}://{bucket}/{key.rstrip('/')}"
    archive = key.endswith(ARCHIVE_SUFFIXES)
    if archive:
        objects = [store.head(key)]
    else:
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        objects = [obj for obj in store.list(prefix) if not obj.key.endswith("/")]
        if not objects:
            raise NotFoundError(f"no objects under {uri}. To fix: {MISSING}")
    identity = "\n".join(sorted(f"{obj.key}\0{obj.version}" for obj in objects))
    folder = cache_root() / "remote" / _digest(canonical)
    target = folder / _digest(identity)
    if target.is_dir():
        return target
    with file_lock(folder / ".lock"):
        if not target.is_dir():  # else another process finished it while we waited
            if archive:
                atomic_folder(target, lambda tmp: _unpack(store, objects[0], tmp, uri))
            else:
                atomic_folder(target, lambda tmp: _download_all(store, objects, prefix, tmp, uri))
        _remove_others(folder, keep=target.name)  # older versions, and temporary folders of crashed runs (we hold the lock)
    return target


def object_versions(uri: str) -> list[tuple[str, str]]:
    """(key, ETag or generation) of the object at an ``s3://`` / ``gs://`` URI, or of every object under
    it when it names a prefix: what the objects are, without downloading them (a dataset's content in
    the job identity)."""
    scheme, bucket, key = _parse(uri)
    store = _S3(bucket) if scheme == "s3" else _GCS(bucket)
    if key and not key.endswith("/"):
        try:
            return [(obj.key, obj.version) for obj in [store.head(key)]]
        except NotFoundError:
            pass  # a prefix written without its trailing slash
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    found = [(obj.key, obj.version) for obj in store.list(prefix) if not obj.key.endswith("/")]
    if not found:
        raise NotFoundError(f"no objects at {uri}. To fix: upload the data there or check the URI")
    return found


@dataclass(frozen=True)
class _Object:
    key: str
    version: str  # S3 ETag / GCS generation: changes whenever the object is written again


class _S3:
    def __init__(self, bucket: str):
        self.bucket = bucket
        self.client = clouds.aws_client("s3")

    def head(self, key: str) -> _Object:
        # Without s3:ListBucket, S3 answers a missing key with 403 rather than 404.
        with clouds.aws_errors(f"s3://{self.bucket}/{key}", "s3:GetObject (and s3:ListBucket on the bucket)", missing=MISSING):
            return _Object(key, self.client.head_object(Bucket=self.bucket, Key=key)["ETag"])

    def list(self, prefix: str) -> list[_Object]:
        with clouds.aws_errors(f"s3://{self.bucket}/{prefix}", "s3:ListBucket", missing=MISSING):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            return [_Object(obj["Key"], obj["ETag"]) for page in pages for obj in page.get("Contents", [])]

    def download(self, obj: _Object, dest: Path) -> None:
        with clouds.aws_errors(f"s3://{self.bucket}/{obj.key}", "s3:GetObject", missing=MISSING):
            self.client.download_file(self.bucket, obj.key, str(dest))


class _GCS:
    def __init__(self, bucket: str):
        self.bucket = bucket
        with clouds.google_errors(f"gs://{bucket}", "storage.objects.list"):
            self.client = clouds.gcs_client()

    def head(self, key: str) -> _Object:
        with clouds.google_errors(f"gs://{self.bucket}/{key}", "storage.objects.get", missing=MISSING):
            blob = self.client.bucket(self.bucket).get_blob(key)
        if blob is None:
            raise NotFoundError(f"gs://{self.bucket}/{key} does not exist. To fix: {MISSING}")
        return _Object(key, str(blob.generation))

    def list(self, prefix: str) -> list[_Object]:
        with clouds.google_errors(f"gs://{self.bucket}/{prefix}", "storage.objects.list", missing=MISSING):
            return [_Object(blob.name, str(blob.generation)) for blob in self.client.list_blobs(self.bucket, prefix=prefix)]

    def download(self, obj: _Object, dest: Path) -> None:
        with clouds.google_errors(f"gs://{self.bucket}/{obj.key}", "storage.objects.get", missing=MISSING):
            self.client.bucket(self.bucket).blob(obj.key).download_to_filename(str(dest))


def _parse(uri: str) -> tuple[str, str, str]:
    scheme, _, rest = uri.partition("://")
    bucket, _, key = rest.partition("/")
    if scheme not in SCHEMES or not bucket:
        raise SpecError(f"'{uri}' is not an s3:// or gs:// URI with a bucket. "
                        "To fix: give a local folder, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX")
    return scheme, bucket, key


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _remove_others(folder: Path, keep: str) -> None:
    for child in folder.iterdir() if folder.is_dir() else ():
        if child.name not in (keep, ".lock") and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)


def _inside(name: str, uri: str) -> PurePosixPath:
    """``name`` as a path inside the target folder; BackendError for an absolute path or ``..``."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise BackendError(f"{uri} holds '{name}', a path outside the model folder; nothing was unpacked. "
                           "To fix: store the model dir with paths relative to its root (tar -C DIR -czf model.tar.gz .)")
    return path


def _download_all(store: _S3 | _GCS, objects: list[_Object], prefix: str, into: Path, uri: str) -> None:
    paths = [_inside(obj.key[len(prefix):], uri) for obj in objects]  # every key checked before any download
    for obj, path in zip(objects, paths, strict=True):
        dest = into / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        store.download(obj, dest)


def _unpack(store: _S3 | _GCS, obj: _Object, into: Path, uri: str) -> None:
    """Download the archive beside ``into`` and unpack it there, refusing members that would land
    outside it; nothing is unpacked from an archive with one bad member."""
    with tempfile.TemporaryDirectory(prefix=".archive-", dir=into.parent) as scratch:
        archive = Path(scratch) / "archive"
        store.download(obj, archive)
        try:
            with tarfile.open(archive) as tar:
                members = tar.getmembers()
                for member in members:
                    _inside(member.name, uri)
                tar.extractall(into, members=members, filter="data")
        except tarfile.FilterError as exc:
            raise BackendError(f"{uri}: {exc}; refusing to unpack it. "
                               "To fix: pack the model dir with plain files and folders only") from None
        except (tarfile.ReadError, EOFError) as exc:  # EOFError: a truncated gzip stream
            raise BackendError(f"{uri} is not a readable tar archive ({exc}). "
                               "To fix: check the object (a SageMaker model.tar.gz is a gzip-compressed tar)") from None
