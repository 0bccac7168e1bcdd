"""Captured traffic as prompt/response exchanges: the capture objects under a local folder, ``s3://`` or
``gs://`` prefix, and the payload shapes every route of ours (and SageMaker's own capture) writes.

    objects = list_objects("s3://bucket/launcher/capture/claims/")   # [CaptureObject(key, size, version)]
    exchanges, skipped = read_object(source, objects[0])            # [Exchange], [Skipped]

A capture object is a whole, immutable JSONL file (``CaptureWriter`` writes each once; SageMaker too), so
the poller's cursor counts objects, not lines. Records are parsed by ``launcher.capture.parse`` (the
``JSON``, ``CSV`` and ``BASE64`` encodings), then the payloads by shape:

* text generation (TGI / LMI): ``{"inputs": str | [str], "parameters": {...}}`` ->
  ``[{"generated_text": ...}]`` (or one object, or TGI's ``{"generated_text"}``);
* chat (OpenAI): ``{"messages": [...]}`` -> ``{"choices": [{"message": {"content"}, "finish_reason"}]}``;
  the prompt is the conversation's text (every turn's content, in order), as the model saw it;
* OpenAI completions: ``{"prompt": str}`` -> ``{"choices": [{"text"}]}``;
* Vertex AI: ``{"instances": [str | {"prompt"} | {"messages"}], ...}`` -> ``{"predictions": [...]}``;
  one exchange per instance;
* ``text/csv``: the first column of each row is a prompt (input) or a response (output).

A record that cannot be read (not JSON, a field missing, a shape none of these, an error response,
input without output) is **skipped and counted**, never fatal: ``Skipped(where, why)``. A record whose
``eventMetadata.launcher.status`` is not 2xx still counts for the operational signals (error rate,
latency), so it comes back as an ``Exchange`` with ``ok=False`` and no text to score.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.capture import CaptureRecord, parse


@dataclass(frozen=True)
class CaptureObject:
    """One capture file: its key (relative to the source), size and a version (mtime, ETag, generation)."""

    key: str
    size: int = 0
    version: str = ""


@dataclass(frozen=True)
class Exchange:
    """One prompt and its response, with what the capture says about how it went."""

    event_id: str
    inference_time: str
    prompt: str
    response: str
    ok: bool = True
    status: int | None = None
    latency_ms: float | None = None
    finish_reason: str | None = None  # "length": cut at max_new_tokens
    where: str = ""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Skipped:
    where: str
    why: str


def _split(source: str) -> tuple[str, str, str]:
    """(scheme, bucket, prefix) of ``s3://b/p``, ``gs://b/p``; ("file", "", path) of a local path."""
    for scheme in ("s3", "gs"):
        if source.startswith(f"{scheme}://"):
            bucket, _, prefix = source[len(scheme) + 3:].partition("/")
            return scheme, bucket, prefix
    return "file", "", source


def list_objects(source: str) -> list[CaptureObject]:
    """Every ``*.jsonl`` capture object under ``source``, in key order (time order, the layout being
    ``.../yyyy/mm/dd/hh/``). A source that does not exist is an empty list, not an error: an endpoint
    that has had no traffic yet has written nothing."""
    scheme, bucket, prefix = _split(source)
    if scheme == "file":
        from launcher.capture import capture_files

        root = Path(prefix)
        if not root.exists():
            return []
        return [CaptureObject(str(p.relative_to(root)) if root.is_dir() else p.name, p.stat().st_size, str(p.stat().st_mtime_ns))
                for p in capture_files(root)]
    from launcher import clouds

    found: list[CaptureObject] = []
    if scheme == "s3":
        client = clouds.aws_client("s3")
        with clouds.aws_errors(source, "s3:ListBucket", missing=f"create the bucket {bucket} or fix --source"):
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                found += [CaptureObject(o["Key"][len(prefix):].lstrip("/"), o["Size"], o.get("ETag", "").strip('"'))
                          for o in page.get("Contents", []) if o["Key"].endswith(".jsonl")]
    else:
        with clouds.google_errors(source, "storage.objects.list", missing=f"create the bucket gs://{bucket} or fix --source"):
            for blob in clouds.gcs_client().list_blobs(bucket, prefix=prefix):
                if blob.name.endswith(".jsonl"):
                    found.append(CaptureObject(blob.name[len(prefix):].lstrip("/"), blob.size or 0, str(blob.generation)))
    return sorted(found, key=lambda o: o.key)


def fetch(source: str, obj: CaptureObject) -> bytes:
    scheme, bucket, prefix = _split(source)
    if scheme == "file":
        root = Path(prefix)
        return (root / obj.key if root.is_dir() else root).read_bytes()
    from launcher import clouds

    key = f"{prefix.rstrip('/')}/{obj.key}" if prefix else obj.key
    if scheme == "s3":
        with clouds.aws_errors(f"s3://{bucket}/{key}", "s3:GetObject"):
            return clouds.aws_client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    with clouds.google_errors(f"gs://{bucket}/{key}", "storage.objects.get"):
        return clouds.gcs_client().bucket(bucket).blob(key).download_as_bytes()


def read_object(source: str, obj: CaptureObject) -> tuple[list[Exchange], list[Skipped]]:
    """The exchanges in one capture object, and the records skipped (with why)."""
    exchanges: list[Exchange] = []
    skipped: list[Skipped] = []
    for number, line in enumerate(fetch(source, obj).decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{obj.key}:{number}"
        try:
            exchanges += exchanges_of(parse(line, where), where)
        except ValueError as exc:
            skipped.append(Skipped(where, str(exc).removeprefix(f"{where}: ")))
    return exchanges, skipped


# --- payloads -----------------------------------------------------------------------------------------
def exchanges_of(record: CaptureRecord, where: str = "") -> list[Exchange]:
    """The exchanges of one parsed record (ValueError: a shape we cannot read)."""
    status = record.status
    common = {"event_id": record.event_id, "inference_time": record.inference_time, "status": status,
              "latency_ms": record.latency_ms, "where": where, "extra": record.extra}
    if record.output is None:
        raise ValueError("captureData.endpointOutput is missing (input-only capture)")
    if status is not None and not 200 <= int(status) < 300:
        return [Exchange(prompt="", response="", ok=False, **common)]
    prompts = _prompts(record)
    answers = _answers(record)
    if len(answers) != len(prompts):
        raise ValueError(f"{len(prompts)} prompt(s) but {len(answers)} response(s)")
    out = []
    for index, (prompt, (text, finish)) in enumerate(zip(prompts, answers, strict=True)):
        event = record.event_id if len(prompts) == 1 else f"{record.event_id}#{index}"
        out.append(Exchange(prompt=prompt, response=text, finish_reason=finish, **{**common, "event_id": event}))
    return out


def _csv_column(data: bytes) -> list[str]:
    rows = [row for row in csv.reader(io.StringIO(data.decode("utf-8"))) if row]
    if not rows:
        raise ValueError("an empty CSV body")
    return [row[0] for row in rows]


def _is_csv(section: dict[str, str]) -> bool:
    return section["encoding"] == "CSV" or section["observedContentType"].split(";")[0].strip().lower() == "text/csv"


def _json(section_bytes: bytes, what: str) -> Any:
    try:
        return json.loads(section_bytes)
    except ValueError:
        raise ValueError(f"the {what} is not JSON") from None


def _chat_text(messages: Any, what: str) -> str:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{what} is not a list of messages")
    parts = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # OpenAI's content parts
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise ValueError(f"{what}: a message without text content")
        parts.append(content)
    return "\n".join(parts)


def _prompts(record: CaptureRecord) -> list[str]:
    if _is_csv(record.input):
        return _csv_column(record.input_bytes())
    body = _json(record.input_bytes(), "input")
    if isinstance(body, str):
        return [body]
    if not isinstance(body, dict):
        raise ValueError("the input is neither an object nor a string")
    if "messages" in body:
        return [_chat_text(body["messages"], "input.messages")]
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise ValueError("input.instances is not a non-empty list")
        prompts = []
        for index, instance in enumerate(instances):
            if isinstance(instance, str):
                prompts.append(instance)
            elif isinstance(instance, dict) and "messages" in instance:
                prompts.append(_chat_text(instance["messages"], f"input.instances[{index}].messages"))
            elif isinstance(instance, dict) and isinstance(instance.get("prompt", instance.get("inputs")), str):
                prompts.append(instance.get("prompt", instance.get("inputs")))
            else:
                raise ValueError(f"input.instances[{index}] has no prompt, inputs or messages")
        return prompts
    for key in ("inputs", "prompt"):
        if key in body:
            value = body[key]
            if isinstance(value, list) and len(value) == 1 and key == "prompt":
                value = value[0]
            values = value if isinstance(value, list) else [value]
            if not values or not all(isinstance(v, str) for v in values):
                raise ValueError(f"input.{key} is not a string or a list of strings")
            return values
    raise ValueError("the input has no messages, instances, inputs or prompt")


def _answers(record: CaptureRecord) -> list[tuple[str, str | None]]:
    if _is_csv(record.output):
        return [(text, None) for text in _csv_column(record.output_bytes())]
    body = _json(record.output_bytes(), "output")
    if isinstance(body, dict) and "error" in body:
        raise ValueError("the output is an error response")
    if isinstance(body, dict) and "predictions" in body:
        predictions = body["predictions"]
        if not isinstance(predictions, list):
            raise ValueError("output.predictions is not a list")
        return [(_text(p, f"output.predictions[{i}]"), None) for i, p in enumerate(predictions)]
    if isinstance(body, dict) and "choices" in body:
        choices = body["choices"]
        if not isinstance(choices, list) or not choices:
            raise ValueError("output.choices is empty")
        choice = choices[0]
        message = choice.get("message") if isinstance(choice, dict) else None
        text = message.get("content") if isinstance(message, dict) else (choice.get("text") if isinstance(choice, dict) else None)
        if not isinstance(text, str):
            raise ValueError("output.choices[0] has no message content or text")
        return [(text, choice.get("finish_reason"))]
    items = body if isinstance(body, list) else [body]
    answers = []
    for index, item in enumerate(items):
        answers.append((_text(item, f"output[{index}]"), (item.get("details") or {}).get("finish_reason") if isinstance(item, dict) else None))
    return answers


def _text(item: Any, what: str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        for key in ("generated_text", "content", "text", "output"):
            if isinstance(item.get(key), str):
                return item[key]
    raise ValueError(f"{what} has no generated_text")
