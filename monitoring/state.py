"""The poller's state object (cursor, pending window, alert book, outbox), read and written whole and
conditionally, so two pollers on one state never both commit.

    state, token = load(uri)          # {} and None when there is none yet
    token = save(uri, state, token)   # StateConflict if someone else wrote it since we read it

``uri``: a local file (written to a temporary file and renamed, under a lock file beside it), ``s3://``
(PutObject with ``If-None-Match: *`` the first time, ``If-Match: <ETag>`` after) or ``gs://`` (the
upload with ``if_generation_match``: 0 the first time, the generation read after). A conditional write
refused means another poller committed first: this run's results are dropped (nothing was sent yet),
and the next run starts from the other's cursor.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from launcher.errors import BackendError


class StateConflict(BackendError):
    """Another poller wrote the state since this one read it."""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _split(uri: str) -> tuple[str, str, str]:
    for scheme in ("s3", "gs"):
        if uri.startswith(f"{scheme}://"):
            bucket, _, key = uri[len(scheme) + 3:].partition("/")
            return scheme, bucket, key
    return "file", "", uri


def load(uri: str) -> tuple[dict[str, Any], str | None]:
    scheme, bucket, key = _split(uri)
    if scheme == "file":
        path = Path(key)
        if not path.is_file():
            return {}, None
        text = path.read_text(encoding="utf-8")
        return json.loads(text), _digest(text)
    from launcher import clouds
    from launcher.errors import NotFoundError

    try:
        if scheme == "s3":
            with clouds.aws_errors(uri, "s3:GetObject", missing="nothing: a first poll creates it"):
                answer = clouds.aws_client("s3").get_object(Bucket=bucket, Key=key)
                return json.loads(answer["Body"].read()), answer["ETag"]
        blob = clouds.gcs_client().bucket(bucket).blob(key)
        with clouds.google_errors(uri, "storage.objects.get", missing="nothing: a first poll creates it"):
            data = blob.download_as_bytes()
            return json.loads(data), str(blob.generation)
    except NotFoundError:
        return {}, None


def save(uri: str, state: dict[str, Any], token: str | None) -> str:
    """Write ``state`` if nobody else has since ``token`` was read; the new token."""
    body = json.dumps(state, separators=(",", ":"), sort_keys=True)
    scheme, bucket, key = _split(uri)
    if scheme == "file":
        from launcher.state import file_lock

        path = Path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.with_name(f".{path.name}.lock")):
            current = path.read_text(encoding="utf-8") if path.is_file() else None
            if (None if current is None else _digest(current)) != token:
                raise StateConflict(f"another poller updated {uri} since this one read it; nothing was sent. To fix: run "
                                    "one poller per state, then poll again")
            partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
            partial.write_text(body, encoding="utf-8")
            os.replace(partial, path)
        return _digest(body)
    from launcher import clouds

    conflict = StateConflict(f"another poller updated {uri} since this one read it; nothing was sent. To fix: run one "
                             "poller per state, then poll again")
    if scheme == "s3":
        condition = {"IfMatch": token} if token else {"IfNoneMatch": "*"}
        try:
            with clouds.aws_errors(uri, "s3:PutObject"):
                return clouds.aws_client("s3").put_object(Bucket=bucket, Key=key, Body=body.encode(),
                                                          ContentType="application/json", **condition)["ETag"]
        except BackendError as exc:
            if "PreconditionFailed" in str(exc.__cause__) or "ConditionalRequestConflict" in str(exc.__cause__):
                raise conflict from None
            raise
    blob = clouds.gcs_client().bucket(bucket).blob(key)
    try:
        with clouds.google_errors(uri, "storage.objects.create"):
            blob.upload_from_string(body, content_type="application/json", if_generation_match=int(token) if token else 0)
    except BackendError as exc:
        if type(exc.__cause__).__name__ == "PreconditionFailed":
            raise conflict from None
        raise
    return str(blob.generation)
