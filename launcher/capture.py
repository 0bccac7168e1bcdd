"""Captured traffic: SageMaker's data-capture JSONL record, read and written (shared by serve and monitoring).

One record a line, exactly SageMaker's documented shape, so ``monitoring`` reads a local or Vertex
endpoint's capture and a SageMaker endpoint's own with one reader::

    {"captureData": {
       "endpointInput":  {"observedContentType": "application/json", "mode": "INPUT",
                          "data": "{\\"inputs\\": \\"...\\"}", "encoding": "JSON"},
       "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                          "data": "eyJnZW5lcmF0ZWRfdGV4dCI6ICIuLi4ifQ==", "encoding": "BASE64"}},
     "eventMetadata": {"eventId": "...", "inferenceId": "...", "inferenceTime": "2026-11-28T08:03:35Z"},
     "eventVersion": "0"}

``data`` is always a string: the body's text with ``encoding`` JSON (a JSON content type whose body
parses) or CSV (``text/csv``), base64 of the raw bytes otherwise (SageMaker's rule for content types the
capture config does not list). ``inferenceId`` is present only when the caller passed one.

Decisions that are not obvious:

* **Latency and status.** SageMaker's documented ``eventMetadata`` has only the three ids above; its
  runtime forwards a caller's ``CustomAttributes`` header verbatim, but we could not confirm how (or
  whether) a capture record carries it, so we do not borrow that name. Our extras go under one namespaced
  key, ``eventMetadata.launcher`` (``latencyMs``, ``status``, ``route``, and ``stream`` for a streamed answer), which
  SageMaker's own readers ignore and ``CaptureRecord.extra`` exposes. A SageMaker-written record simply
  lacks it.
* **Files.** ``<dest>/<endpoint>/<variant>/yyyy/mm/dd/hh/<MM>-<SS>-<uuid>.jsonl``, the hour that of each
  record's ``inferenceTime`` (UTC), as SageMaker lays them out, and the name starting with the minute and
  second of the file's first record, as SageMaker's own do (so key order is time order). ``dest`` is a local folder, ``s3://bucket/prefix``
  or ``gs://bucket/prefix``. A local file is written to a hidden temporary name and renamed; a cloud
  object is one PUT (whole once it exists). No file is ever appended to, so a reader never sees half a
  record.
* **Buffered.** ``CaptureWriter`` keeps records in memory and writes them when ``max_records`` or
  ``max_bytes`` is reached, every ``flush_every_s`` seconds (a background thread), and on ``close()``
  (the server's shutdown, after SIGTERM). A write that fails keeps its records for the next flush; on
  ``close()`` what still cannot be written to the cloud goes to a local spill folder, named in the log.
* **Sampling** (``percent``, SageMaker's ``InitialSamplingPercentage``) is decided per request by
  ``sampled()``, before the record is built.

Standard library only (``boto3`` / ``google-cloud-storage`` through ``launcher.clouds`` when a cloud
destination is flushed).
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
import logging
import random
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.state import write_text

EVENT_VERSION = "0"
DEFAULT_VARIANT = "AllTraffic"
ENCODINGS = ("JSON", "CSV", "BASE64")
EXTRA_KEY = "launcher"  # eventMetadata.<EXTRA_KEY>: our latency/status/route fields

log = logging.getLogger("launcher.capture")


def now_iso() -> str:
    """``inferenceTime``'s format: UTC, whole seconds, ``Z``."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_json_type(content_type: str) -> bool:
    kind = content_type.split(";")[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json") or kind == "application/jsonlines"


def encode(body: bytes, content_type: str, mode: str) -> dict[str, str]:
    """One ``endpointInput`` / ``endpointOutput`` section for ``body``."""
    content_type = content_type or "application/octet-stream"
    encoding = "BASE64"
    text = None
    kind = content_type.split(";")[0].strip().lower()
    if _is_json_type(content_type) or kind == "text/csv":
        try:
            text = body.decode("utf-8")
            if kind not in ("text/csv", "application/jsonlines"):
                json.loads(text)
            encoding = "CSV" if kind == "text/csv" else "JSON"
        except (UnicodeDecodeError, ValueError):
            text = None
            encoding = "BASE64"
    data = text if text is not None else base64.b64encode(body).decode("ascii")
    return {"observedContentType": content_type, "mode": mode, "data": data, "encoding": encoding}


def decode(section: dict[str, Any]) -> bytes:
    """The body bytes of a section (``encoding`` JSON/CSV: the text; BASE64: decoded)."""
    data = section["data"]
    if section["encoding"] == "BASE64":
        return base64.b64decode(data)
    return data.encode("utf-8")


def make_record(request_body: bytes, request_type: str, response_body: bytes, response_type: str, *,
                inference_id: str | None = None, event_id: str | None = None, inference_time: str | None = None,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A capture record (a dict ready for ``json.dumps``) for one request and its response."""
    metadata: dict[str, Any] = {"eventId": event_id or str(uuid.uuid4())}
    if inference_id:
        metadata["inferenceId"] = inference_id
    metadata["inferenceTime"] = inference_time or now_iso()
    if extra:
        metadata[EXTRA_KEY] = dict(extra)
    return {
        "captureData": {
            "endpointInput": encode(request_body, request_type, "INPUT"),
            "endpointOutput": encode(response_body, response_type, "OUTPUT"),
        },
        "eventMetadata": metadata,
        "eventVersion": EVENT_VERSION,
    }


# --- reading ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaptureRecord:
    """One parsed capture record."""

    input: dict[str, str]
    output: dict[str, str] | None
    event_id: str
    inference_time: str
    inference_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # eventMetadata.launcher: latencyMs, status, route, ...
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def input_bytes(self) -> bytes:
        return decode(self.input)

    def output_bytes(self) -> bytes:
        return decode(self.output) if self.output else b""

    def input_json(self) -> Any:
        return json.loads(self.input_bytes())

    def output_json(self) -> Any:
        return json.loads(self.output_bytes()) if self.output else None

    @property
    def latency_ms(self) -> float | None:
        return self.extra.get("latencyMs")

    @property
    def status(self) -> int | None:
        return self.extra.get("status")


def _section(record: dict, key: str, mode: str, where: str, required: bool) -> dict[str, str] | None:
    section = record["captureData"].get(key)
    if section is None:
        if required:
            raise ValueError(f"{where}: captureData.{key} is missing")
        return None  # SageMaker captures input only, or output only, when configured so
    for name in ("observedContentType", "mode", "data", "encoding"):
        if not isinstance(section.get(name), str):
            raise ValueError(f"{where}: captureData.{key}.{name} is missing or not a string")
    if section["mode"] != mode:
        raise ValueError(f"{where}: captureData.{key}.mode is '{section['mode']}', expected '{mode}'")
    if section["encoding"] not in ENCODINGS:
        raise ValueError(f"{where}: captureData.{key}.encoding is '{section['encoding']}', expected one of {', '.join(ENCODINGS)}")
    if section["encoding"] == "BASE64":
        try:
            base64.b64decode(section["data"], validate=True)
        except binascii.Error:
            raise ValueError(f"{where}: captureData.{key}.data is not valid base64") from None
    return section


def parse(line: str | bytes | dict, where: str = "record") -> CaptureRecord:
    """A record from one JSONL line (or its dict); ValueError naming the field when it is not one."""
    try:
        record = line if isinstance(line, dict) else json.loads(line)
    except ValueError as exc:
        raise ValueError(f"{where}: not JSON ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("captureData"), dict):
        raise ValueError(f"{where}: captureData is missing")
    meta = record.get("eventMetadata")
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: eventMetadata is missing")
    for name in ("eventId", "inferenceTime"):
        if not isinstance(meta.get(name), str):
            raise ValueError(f"{where}: eventMetadata.{name} is missing or not a string")
    if record.get("eventVersion") != EVENT_VERSION:
        raise ValueError(f"{where}: eventVersion is {record.get('eventVersion')!r}, expected '{EVENT_VERSION}'")
    return CaptureRecord(
        input=_section(record, "endpointInput", "INPUT", where, required=True),
        output=_section(record, "endpointOutput", "OUTPUT", where, required=False),
        event_id=meta["eventId"], inference_time=meta["inferenceTime"], inference_id=meta.get("inferenceId"),
        extra=dict(meta.get(EXTRA_KEY) or {}), raw=record,
    )


def capture_files(folder: str | Path) -> list[Path]:
    """The ``*.jsonl`` capture files under a local folder (hidden temporary files excluded), in path order:
    which is time order, the layout being ``.../yyyy/mm/dd/hh/``."""
    root = Path(folder)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*.jsonl") if p.is_file() and not p.name.startswith("."))


def read_records(source: str | Path | Iterable[str]) -> Iterator[CaptureRecord]:
    """Every record in a local capture folder, one file, or an iterable of lines; blank lines skipped."""
    if isinstance(source, (str, Path)):
        for path in capture_files(source):
            with open(path, encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if line.strip():
                        yield parse(line, f"{path}:{number}")
        return
    for number, line in enumerate(source, 1):
        if line.strip():
            yield parse(line, f"line {number}")


# --- writing ------------------------------------------------------------------------------------------
def object_key(endpoint: str, variant: str, inference_time: str) -> str:
    """``<endpoint>/<variant>/yyyy/mm/dd/hh/<MM>-<SS>-<uuid>.jsonl`` for a file whose first record was made
    at ``inference_time``: named by its minute and second, as SageMaker names its own (``mm-ss-mmm-uuid``),
    so key order is time order."""
    hour = inference_time[:13]  # "2026-11-28T08"
    yyyy, mm, dd_hh = hour[:4], hour[5:7], hour[8:]
    dd, hh = dd_hh.split("T")
    minute, second = (inference_time[14:16] or "00"), (inference_time[17:19] or "00")
    return f"{endpoint}/{variant}/{yyyy}/{mm}/{dd}/{hh}/{minute}-{second}-{uuid.uuid4()}.jsonl"


class CaptureWriter:
    """Buffers capture records and writes them as whole files under ``dest`` (see the module docstring).

    ``add(record)`` is thread-safe and cheap; ``close()`` writes what is left and stops the timer."""

    def __init__(self, dest: str | Path, endpoint: str, variant: str = DEFAULT_VARIANT, *, percent: float = 100.0,
                 max_records: int = 1000, max_bytes: int = 4 << 20, flush_every_s: float = 10.0,
                 spill_dir: str | Path | None = None, kms_key: str | None = None):
        if not 0 <= percent <= 100:
            raise ValueError(f"capture percent is {percent}, expected 0 to 100")
        self.dest = str(dest).rstrip("/")
        self.endpoint, self.variant = endpoint, variant
        self.percent = float(percent)
        self.max_records, self.max_bytes, self.flush_every_s = max_records, max_bytes, flush_every_s
        self.spill_dir = Path(spill_dir) if spill_dir else None
        self.kms_key = kms_key  # S3: SSE-KMS with this key; GCS: CMEK (a Cloud KMS key name)
        self.written = 0  # records in files so far
        self.files: list[str] = []  # what was written, in order
        self._buffer: list[tuple[str, str]] = []  # (inferenceTime, JSON line)
        self._size = 0
        self._lock = threading.Lock()  # guards the buffer
        self._flush_lock = threading.Lock()  # one flush at a time, so records are written once
        self._stop = threading.Event()
        self._closed = False
        self._timer = threading.Thread(target=self._tick, name="capture-flush", daemon=True)
        self._timer.start()

    def sampled(self) -> bool:
        """Whether this request is captured (``percent`` of requests, at random)."""
        return self.percent >= 100 or random.random() * 100 < self.percent

    def add(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"
        with self._lock:
            if self._closed:
                raise RuntimeError("the capture writer is closed")
            self._buffer.append((record["eventMetadata"]["inferenceTime"], line))
            self._size += len(line)
            full = len(self._buffer) >= self.max_records or self._size >= self.max_bytes
        if full:
            self.flush()

    def pending(self) -> int:
        with self._lock:
            return len(self._buffer)

    def flush(self) -> int:
        """Write the buffered records now; returns how many were written. A failed write keeps them."""
        with self._flush_lock:
            with self._lock:
                batch, self._buffer, self._size = self._buffer, [], 0
            if not batch:
                return 0
            by_hour: dict[str, list[str]] = {}
            first: dict[str, str] = {}
            for when, line in batch:
                by_hour.setdefault(when[:13], []).append(line)
                first[when[:13]] = min(first.get(when[:13], when), when)
            done = 0
            failed: list[tuple[str, str]] = []
            for hour, lines in by_hour.items():
                key = object_key(self.endpoint, self.variant, first[hour])
                try:
                    self._put(key, "".join(lines))
                    done += len(lines)
                except Exception as exc:  # noqa: BLE001 - a store that fails must not take the server down
                    log.warning("capture: writing %d records to %s/%s failed (%s); kept for the next flush",
                                len(lines), self.dest, key, exc)
                    failed += [(hour, line) for line in lines]
            if failed:
                with self._lock:
                    self._buffer[:0] = failed
                    self._size += sum(len(line) for _, line in failed)
            self.written += done
            return done

    def close(self) -> None:
        """Flush what is left (twice, should the first try fail), then spill what the store refused."""
        self._stop.set()
        self._timer.join(timeout=5)
        with self._lock:
            self._closed = True
        self.flush()
        if self.pending():
            self.flush()
        if self.pending():
            self._spill()

    def _tick(self) -> None:
        while not self._stop.wait(self.flush_every_s):
            self.flush()

    def _spill(self) -> None:
        with self._lock:
            batch, self._buffer, self._size = self._buffer, [], 0
        folder = self.spill_dir or Path(tempfile.gettempdir()) / "launcher-capture-spill"
        path = folder / object_key(self.endpoint, self.variant, batch[0][0])
        write_text(path, "".join(line for _, line in batch))
        log.error("capture: %d records could not be written to %s; they are in %s", len(batch), self.dest, path)

    def _put(self, key: str, text: str) -> None:
        if self.dest.startswith("s3://"):
            from launcher import clouds

            bucket, _, prefix = self.dest[5:].partition("/")
            name = f"{prefix}/{key}" if prefix else key
            encryption = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key} if self.kms_key else {}
            clouds.aws_client("s3").put_object(Bucket=bucket, Key=name, Body=text.encode("utf-8"),
                                               ContentType="application/jsonlines", **encryption)
            where = f"s3://{bucket}/{name}"
        elif self.dest.startswith("gs://"):
            from launcher import clouds

            bucket, _, prefix = self.dest[5:].partition("/")
            name = f"{prefix}/{key}" if prefix else key
            clouds.gcs_client().bucket(bucket).blob(name, kms_key_name=self.kms_key).upload_from_string(
                text.encode("utf-8"), content_type="application/jsonlines")
            where = f"gs://{bucket}/{name}"
        else:
            path = Path(self.dest) / key
            write_text(path, text)
            where = str(path)
        self.files.append(where)


__all__ = ["CaptureRecord", "CaptureWriter", "DEFAULT_VARIANT", "EVENT_VERSION", "capture_files", "decode", "encode",
           "make_record", "now_iso", "object_key", "parse", "read_records"]
