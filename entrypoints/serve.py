"""The serving entrypoint: one HTTP app with SageMaker's, Vertex AI's and OpenAI's contracts, capturing traffic.

    python -m entrypoints.serve --model DIR [--adapter NAME=DIR ...] [--host 127.0.0.1] [--port 8080]
        [--api-key KEY | env LAUNCHER_API_KEY] [--capture DEST] [--capture-percent 100]
        [--max-new-tokens-cap N] [--max-body-bytes N] [--request-timeout S] [--max-concurrency N]

Routes (a Starlette app served by uvicorn):

* SageMaker: ``GET /ping``, ``POST /invocations``: ``{"inputs": str | [str], "parameters": {...}}`` ->
  ``[{"generated_text": ...}]`` (TGI's shape; ``parameters.adapter_id`` picks an adapter, as in TGI), or
  ``{"messages": [...]}`` -> an OpenAI chat completion (TGI's and LMI's messages API). ``"stream": true``
  answers server-sent events (what InvokeEndpointWithResponseStream relays): TGI's token events for
  ``inputs`` (one string), OpenAI's chunks for ``messages``. Port 8080, or ``SAGEMAKER_BIND_TO_PORT``.
* Vertex AI: ``AIP_HEALTH_ROUTE`` / ``AIP_PREDICT_ROUTE`` (default ``/health``, ``/predict``) on
  ``AIP_HTTP_PORT``: ``{"instances": [str | {"prompt": ...} | {"messages": [...]}], "parameters": {...}}``
  -> ``{"predictions": [str, ...]}``; a bare chat body ``{"messages": [...], "stream": ...}`` (what
  rawPredict and streamRawPredict forward) is answered as on ``/v1/chat/completions``.
* OpenAI: ``POST /v1/chat/completions``, ``POST /v1/completions`` (``stream: true``: server-sent events
  ending ``data: [DONE]``), ``GET /v1/models`` (the base and every adapter; ``model`` picks one).
* ``GET /metrics``: Prometheus text.

The three families are thin translators (``_sagemaker``, ``_vertex``, ``_chat``, ``_completion``) over one
``Engine`` (``entrypoints.engines``); the shared path (``Server.serve_request``: the concurrency limit, the
body limit, the timeout, errors, metrics and the one capture record per request) is written once.
Chat prompts are built with the training recipe's own ``sequences.prompt_ids``, so the model sees a
served conversation exactly as it saw training prompts; ``inputs`` / ``prompt`` text is raw (TGI's and
OpenAI's completions semantics).

Decisions that are not obvious:

* **Limits.** A body over ``--max-body-bytes`` is 413; ``max_new_tokens`` (``max_tokens``) above
  ``--max-new-tokens-cap`` is 400 naming the field and the cap (TGI and vLLM refuse rather than clamp; a
  silently shorter answer is worse than a clear error); a prompt plus its new tokens beyond the model's
  context is 400; a request not done in ``--request-timeout`` is 504 (mid-stream: an error event, then
  ``[DONE]``); more than ``--max-concurrency`` generation requests in flight is 503 with ``Retry-After``.
  Any other fault of a request is 400 naming the field; an engine failure is 500. No request takes the
  server down.
* **Readiness.** The model loads after the server starts listening; ``/ping`` and the Vertex health route
  answer 503 until a one-token generation has succeeded, then 200. A load failure ends the process
  (exit 1), so a deploy waiting on it sees at once.
* **Auth.** 127.0.0.1 by default. Any other address needs an API key (``--api-key`` or, better, env
  ``LAUNCHER_API_KEY``: argv is visible to ``ps``), unless ``--behind-platform-auth`` says SageMaker or Vertex
  AI authenticates callers in front of the container. With a key, every route but the health checks needs
  ``Authorization: Bearer <key>`` (``hmac.compare_digest``); 401 otherwise, and such a request is neither
  served nor captured. The key is never logged, and capture records hold bodies, not headers.
* **Capture.** One record per request the endpoint accepted (authenticated, within the body and
  concurrency limits), whatever its status, with latency and status in ``eventMetadata.launcher``
  (``launcher.capture``). A streamed answer is captured as the equivalent non-streamed response. The
  caller's ``X-Amzn-SageMaker-Inference-Id`` header becomes ``inferenceId``. The writer is flushed in the
  server's shutdown (uvicorn's SIGTERM handling lets requests in flight finish first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import importlib.util
import json
import logging
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from entrypoints.engines import Engine, GenerationRequest, GenerationResult, Sampling

log = logging.getLogger("launcher.serve")

INFERENCE_ID_HEADER = "x-amzn-sagemaker-inference-id"
DEFAULT_PORT = 8080
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class ConfigError(Exception):
    """A bad command line: one line, exit 2."""


@dataclass
class ServeConfig:
    model: Path
    adapters: dict[str, Path] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_key: str | None = field(default=None, repr=False)
    capture: str | None = None
    capture_percent: float = 100.0
    capture_kms_key: str | None = None  # encrypts capture objects: an AWS KMS key (s3://) or a Cloud KMS key (gs://)
    capture_flush_s: float = 10.0
    endpoint_name: str | None = None
    variant: str = "AllTraffic"
    max_new_tokens_cap: int = 1024
    default_max_new_tokens: int = 128
    max_body_bytes: int = 1 << 20
    request_timeout: float = 60.0
    max_concurrency: int = 64
    engine: str = "auto"
    device: str = "cpu"
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    threads: int | None = None
    health_route: str = "/health"
    predict_route: str = "/predict"
    behind_platform_auth: bool = False


class RequestError(Exception):
    """A request the endpoint refuses: HTTP ``status`` and an OpenAI-shaped error body."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        code = {400: "invalid_request", 401: "invalid_api_key", 404: "model_not_found", 413: "request_too_large",
                503: "overloaded", 504: "timeout"}.get(self.status)
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": code}}


# --- request fields -------------------------------------------------------------------------------
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list", dict: "an object"}


def _get(obj: dict, name: str, kinds: tuple[type, ...], where: str = "", *, required: bool = False, default: Any = None) -> Any:
    path = f"{where}{name}"
    if name not in obj or obj[name] is None:
        if required:
            raise RequestError(400, f"'{path}' is required", path)
        return default
    value = obj[name]
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        names = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise RequestError(400, f"'{path}' must be {names}, not {json.dumps(value)[:60]}", path)
    return value


def _object(payload: Any, what: str) -> dict:
    if not isinstance(payload, dict):
        raise RequestError(400, f"the request body must be a JSON object ({what})")
    return payload


# --- the server -----------------------------------------------------------------------------------
class Server:
    """The engine, the model names, the capture writer and the metrics of one serving process."""

    def __init__(self, config: ServeConfig, engine: Engine | None = None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        from entrypoints import engines

        self.config = config
        self.ready = False
        self.failure: str | None = None
        self.in_flight = 0
        self.on_fatal = lambda: None  # set by run(): stop the server when the model cannot be loaded
        base, base_name = engines.base_of(config.model)
        adapters = {name: str(path) for name, path in config.adapters.items()}
        self.default_model = base_name
        if (config.model / "adapter_config.json").is_file():  # a job's model dir: its adapter is the default
            own = _model_name(config.model)
            adapters = {own: str(config.model), **adapters}
            self.default_model = own
        self.base_name = base_name
        self.models: dict[str, str | None] = {base_name: None, **{name: name for name in adapters}}
        self.engine = engine or engines.make_engine(
            config.engine, base, adapters, tokenizer_dir=str(config.model), device=config.device,
            max_batch=config.max_batch, batch_wait_ms=config.batch_wait_ms)
        self.capture = None
        if config.capture:
            from launcher.capture import CaptureWriter

            self.capture = CaptureWriter(config.capture, config.endpoint_name or _safe(self.default_model), config.variant,
                                         percent=config.capture_percent, flush_every_s=config.capture_flush_s,
                                         kms_key=config.capture_kms_key)
        registry = self.registry = CollectorRegistry()
        self.m_requests = Counter("launcher_requests", "HTTP requests by route and status", ["route", "status"], registry=registry)
        self.m_latency = Histogram("launcher_request_latency_seconds", "Request latency by route", ["route"], registry=registry,
                                   buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.m_tokens = Counter("launcher_generated_tokens", "Tokens generated", ["model"], registry=registry)
        self.m_prompt_tokens = Counter("launcher_prompt_tokens", "Prompt tokens processed", ["model"], registry=registry)
        self.m_errors = Counter("launcher_errors", "Requests that failed, by route and kind", ["route", "kind"], registry=registry)
        self.m_captured = Counter("launcher_capture_records", "Capture records written to the buffer", registry=registry)
        Gauge("launcher_in_flight", "Generation requests in flight", registry=registry).set_function(lambda: self.in_flight)
        Gauge("launcher_queue_depth", "Requests waiting for a batch", registry=registry).set_function(self.engine.queue_depth)
        Gauge("launcher_ready", "1 once the start-up generation succeeded", registry=registry).set_function(lambda: float(self.ready))

    # --- life cycle --------------------------------------------------------------------------------
    async def warm_up(self) -> None:
        """Load the model, then generate one token: only then is the endpoint ready."""
        from entrypoints.engines import GenerationRequest, Sampling

        try:
            started = time.monotonic()
            await asyncio.to_thread(self._load)
            ids = self._raw_prompt("Hello")
            await self.engine.generate(GenerationRequest(ids, Sampling(max_new_tokens=1), self.models[self.default_model]))
            self.ready = True
            log.info("ready: %s (models: %s) in %.1f s", self.engine.name, ", ".join(self.models), time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001 - reported, then the process ends
            self.failure = f"{type(exc).__name__}: {exc}"
            log.error("Error: the model could not be loaded: %s", self.failure)
            self.on_fatal()

    def _load(self) -> None:
        if self.config.threads:
            import torch

            torch.set_num_threads(self.config.threads)
        self.engine.load()

    def close(self) -> None:
        self.engine.close()
        if self.capture is not None:
            self.capture.close()
            log.info("capture: %d records in %d files under %s", self.capture.written, len(self.capture.files), self.config.capture)

    # --- the shared request path --------------------------------------------------------------------
    async def serve_request(self, request, route: str, handler) -> Any:  # noqa: ANN001
        """The path every generation request takes: limits, body, handler, timeout, errors, capture."""
        from starlette.responses import JSONResponse

        if not self.ready:
            return _error_response(RequestError(503, "the model is still loading. Retry shortly", kind="server_error",
                                                headers={"Retry-After": "2"}))
        if self.in_flight >= self.config.max_concurrency:
            self.m_errors.labels(route, "overloaded").inc()
            return _error_response(RequestError(
                503, f"the endpoint is at its limit of {self.config.max_concurrency} concurrent requests. Retry shortly",
                kind="server_error", headers={"Retry-After": "1"}))
        self.in_flight += 1
        started = time.monotonic()
        streamed = False
        try:
            try:
                body = await self._read_body(request)
            except RequestError as exc:
                self.m_errors.labels(route, "too_large").inc()
                return _error_response(exc)  # not read whole: not served, not captured
            deadline = started + self.config.request_timeout
            try:
                try:
                    payload = json.loads(body)
                except ValueError as exc:
                    raise RequestError(400, f"the request body is not valid JSON: {exc}") from None
                result = await handler(payload, deadline)
            except RequestError as exc:
                self.m_errors.labels(route, "timeout" if exc.status == 504 else "bad_request").inc()
                response = _error_response(exc)
            except Exception as exc:  # noqa: BLE001 - one failed request, not a dead server
                log.exception("request to %s failed", route)
                self.m_errors.labels(route, "internal").inc()
                response = _error_response(RequestError(500, f"generation failed: {type(exc).__name__}", kind="server_error"))
            else:
                if isinstance(result, Streamed):
                    streamed = True  # the stream captures itself and leaves the in-flight count when it ends
                    return result.response(self, request, route, body, started)
                response = JSONResponse(result)
            self._capture(request, route, body, response.body, response.status_code, started)
            return response
        finally:
            if not streamed:
                self.in_flight -= 1

    async def _read_body(self, request) -> bytes:  # noqa: ANN001
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        too_big = RequestError(413, f"the request body is larger than this endpoint's limit of {limit} bytes (--max-body-bytes)")
        if declared and declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    def _capture(self, request, route: str, body: bytes, out: bytes, status: int, started: float,  # noqa: ANN001
                 model: str | None = None, stream: bool = False) -> None:
        if self.capture is None or not self.capture.sampled():
            return
        from launcher.capture import make_record

        extra = {"latencyMs": round((time.monotonic() - started) * 1000, 3), "status": status, "route": route}
        if stream:
            extra["stream"] = True
        self.capture.add(make_record(body, request.headers.get("content-type") or "application/json", out, "application/json",
                                     inference_id=request.headers.get(INFERENCE_ID_HEADER), extra=extra))
        self.m_captured.inc()

    # --- building engine requests ----------------------------------------------------------------------
    def adapter_for(self, name: str | None, param: str) -> tuple[str, str | None]:
        """(the served model name, the engine's adapter) for a request's ``model``; 404 for an unknown one."""
        if name is None or name == "":
            return self.default_model, self.models[self.default_model]
        if name not in self.models:
            raise RequestError(404, f"the model '{name}' does not exist here; this endpoint serves {', '.join(self.models)}",
                               param, kind="not_found_error")
        return name, self.models[name]

    def sampling(self, params: dict, where: str, max_name: str, *, stop_name: str = "stop") -> Sampling:
        from entrypoints.engines import Sampling

        cap = self.config.max_new_tokens_cap
        max_new = _get(params, max_name, (int,), where)
        if max_new is None:
            max_new = min(self.config.default_max_new_tokens, cap)
        if max_new < 1:
            raise RequestError(400, f"'{where}{max_name}' must be at least 1, not {max_new}", f"{where}{max_name}")
        if max_new > cap:
            raise RequestError(400, f"'{where}{max_name}' is {max_new}, above this endpoint's cap of {cap} (--max-new-tokens-cap)",
                               f"{where}{max_name}")
        temperature = _get(params, "temperature", (float,), where, default=0.0)
        top_p = _get(params, "top_p", (float,), where, default=1.0)
        if not 0 <= temperature <= 2:
            raise RequestError(400, f"'{where}temperature' must be between 0 and 2, not {temperature}", f"{where}temperature")
        if not 0 < top_p <= 1:
            raise RequestError(400, f"'{where}top_p' must be above 0 and at most 1, not {top_p}", f"{where}top_p")
        if _get(params, "do_sample", (bool,), where, default=None) is False:
            temperature = 0.0  # TGI: sampling settings count only with do_sample
        stop = _get(params, stop_name, (str, list), where, default=[])
        stop = [stop] if isinstance(stop, str) else stop
        if not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
            raise RequestError(400, f"'{where}{stop_name}' must be a string or a list of at most 4 non-empty strings", f"{where}{stop_name}")
        return Sampling(max_new_tokens=max_new, temperature=temperature, top_p=top_p, stop=tuple(stop))

    def _raw_prompt(self, text: str) -> list[int]:
        from entrypoints.sequences import _with_bos

        tokenizer = self.engine.tokenizer
        return _with_bos(tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"])

    def raw_prompt(self, text: Any, param: str) -> list[int]:
        """The prompt ids of raw text (TGI's ``inputs``, OpenAI's completions ``prompt``)."""
        if not isinstance(text, str) or not text:
            raise RequestError(400, f"'{param}' must be a non-empty string", param)
        return self._raw_prompt(text)

    def chat_prompt(self, messages: Any, param: str) -> list[int]:
        """The prompt ids of a conversation: the training recipe's ``sequences.prompt_ids``."""
        from entrypoints import sequences
        from launcher.data import Example

        if not isinstance(messages, list) or not messages:
            raise RequestError(400, f"'{param}' must be a non-empty list of {{\"role\", \"content\"}} objects", param)
        turns = []
        for index, message in enumerate(messages):
            where = f"{param}[{index}]."
            if not isinstance(message, dict):
                raise RequestError(400, f"'{param}[{index}]' must be an object with 'role' and 'content'", f"{param}[{index}]")
            role = _get(message, "role", (str,), where, required=True)
            if role not in ("system", "user", "assistant"):
                raise RequestError(400, f"'{where}role' must be system, user or assistant, not '{role}'", f"{where}role")
            content = _get(message, "content", (str, list), where, required=True)
            if isinstance(content, list):  # OpenAI content parts: text only
                if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                    raise RequestError(400, f"'{where}content' parts must be {{\"type\": \"text\", \"text\": ...}}", f"{where}content")
                content = "".join(p["text"] for p in content)
            turns.append((role, content))
        example = Example(messages=(*turns, ("assistant", "")), source="request", line=0, fmt="chat")
        return sequences.prompt_ids(self.engine.tokenizer, example)

    def check_fits(self, ids: list[int], sampling: Sampling, param: str) -> None:
        limit = self.engine.context_length
        if len(ids) + sampling.max_new_tokens > limit:
            raise RequestError(400, f"'{param}' is {len(ids)} tokens; with {sampling.max_new_tokens} new tokens that is beyond "
                                    f"the model's context of {limit} tokens. Shorten it or ask for fewer tokens", param)

    async def run_all(self, requests: list[GenerationRequest], deadline: float, model: str) -> list[GenerationResult]:
        """Generate for every request concurrently (they share batches), within the deadline."""
        tasks = [asyncio.ensure_future(self.engine.generate(r)) for r in requests]
        try:
            results = await asyncio.wait_for(asyncio.gather(*tasks), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            for task in tasks:
                task.cancel()
            raise RequestError(504, f"the request did not finish within {self.config.request_timeout:g} s (--request-timeout)",
                               kind="timeout_error") from None
        for result in results:
            self.m_tokens.labels(model).inc(result.completion_tokens)
            self.m_prompt_tokens.labels(model).inc(result.prompt_tokens)
        return list(results)


def _model_name(folder: Path) -> str:
    """A job's model dir is ``.../jobs/<job id>/model``: the job id names it; else the folder's name."""
    return folder.parent.name if folder.name == "model" else folder.name


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-")[:63] or "endpoint"


def _error_response(exc: RequestError):  # noqa: ANN202
    from starlette.responses import JSONResponse

    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _now() -> int:
    return int(time.time())


# --- the OpenAI family ------------------------------------------------------------------------------
def _usage(results: list[GenerationResult]) -> dict[str, int]:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _chat_response(model: str, result: GenerationResult, request_id: str | None = None) -> dict[str, Any]:
    return {
        "id": request_id or f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": _now(), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text}, "finish_reason": result.finish_reason,
                     "logprobs": None}],
        "usage": _usage([result]),
    }


def _completion_response(model: str, result: GenerationResult, request_id: str | None = None) -> dict[str, Any]:
    return {
        "id": request_id or f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": _now(), "model": model,
        "choices": [{"index": 0, "text": result.text, "finish_reason": result.finish_reason, "logprobs": None}],
        "usage": _usage([result]),
    }


def _openai_common(server: Server, payload: dict) -> tuple[str, str | None, bool, bool]:
    model, adapter = server.adapter_for(_get(payload, "model", (str,)), "model")
    n = _get(payload, "n", (int,), default=1)
    if n != 1:
        raise RequestError(400, f"'n' must be 1 here, not {n}", "n")
    stream = _get(payload, "stream", (bool,), default=False)
    options = _get(payload, "stream_options", (dict,), default={})
    usage = bool(_get(options, "include_usage", (bool,), "stream_options.", default=False))
    return model, adapter, stream, usage


async def _chat(server: Server, payload: Any, deadline: float) -> Any:
    from entrypoints.engines import GenerationRequest

    payload = _object(payload, "an OpenAI chat completion request")
    model, adapter, stream, usage = _openai_common(server, payload)
    max_name = "max_completion_tokens" if payload.get("max_completion_tokens") is not None else "max_tokens"
    sampling = server.sampling(payload, "", max_name)
    ids = server.chat_prompt(payload.get("messages"), "messages")
    server.check_fits(ids, sampling, "messages")
    request = GenerationRequest(ids, sampling, adapter)
    if stream:
        return Streamed("chat", model, request, deadline, usage)
    result, = await server.run_all([request], deadline, model)
    return _chat_response(model, result)


async def _completion(server: Server, payload: Any, deadline: float) -> Any:
    from entrypoints.engines import GenerationRequest

    payload = _object(payload, "an OpenAI completion request")
    model, adapter, stream, usage = _openai_common(server, payload)
    prompt = payload.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if prompt is None:
        raise RequestError(400, "'prompt' is required", "prompt")
    sampling = server.sampling({"max_tokens": 16, **payload}, "", "max_tokens")  # OpenAI's default of 16
    ids = server.raw_prompt(prompt, "prompt")
    server.check_fits(ids, sampling, "prompt")
    request = GenerationRequest(ids, sampling, adapter)
    if stream:
        return Streamed("completion", model, request, deadline, usage)
    result, = await server.run_all([request], deadline, model)
    return _completion_response(model, result)


class Streamed:
    """A generation answered as server-sent events: OpenAI's chunk objects then ``data: [DONE]`` (``chat``,
    ``completion``), or TGI's token events, the last carrying ``generated_text`` (``generate``)."""

    def __init__(self, kind: str, model: str, request: GenerationRequest, deadline: float, usage: bool):
        self.kind, self.model, self.request, self.deadline, self.usage = kind, model, request, deadline, usage
        self.id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = _now()

    def _chunk(self, text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        if self.kind == "generate":
            return {"token": {"text": text or "", "special": False}, "generated_text": None, "details": None}
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else ({} if text is None else {"content": text})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            kind = "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": [choice]}

    def response(self, server: Server, http_request, route: str, body: bytes, started: float):  # noqa: ANN001, ANN201
        from starlette.responses import StreamingResponse

        async def events():
            result = None
            status = 200
            error = None
            stream = server.engine.stream(self.request)
            try:
                yield _sse(self._chunk(None, None, first=True)) if self.kind == "chat" else b""
                while True:
                    try:
                        chunk = await asyncio.wait_for(anext(stream), max(0.0, self.deadline - time.monotonic()))
                    except StopAsyncIteration:
                        break
                    if chunk.text:
                        yield _sse(self._chunk(chunk.text, None))
                    if chunk.result is not None:
                        result = chunk.result
                        break
                if result is not None and self.kind == "generate":
                    yield _sse({"token": {"text": "", "special": True}, "generated_text": result.text,
                                "details": {"finish_reason": result.finish_reason, "generated_tokens": result.completion_tokens}})
                elif result is not None:
                    yield _sse(self._chunk(None if self.kind == "chat" else "", result.finish_reason))
                    if self.usage:
                        yield _sse({"id": self.id, "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
                                    "created": self.created, "model": self.model, "choices": [], "usage": _usage([result])})
                    server.m_tokens.labels(self.model).inc(result.completion_tokens)
                    server.m_prompt_tokens.labels(self.model).inc(result.prompt_tokens)
            except TimeoutError:
                status = 504
                error = RequestError(504, f"the request did not finish within {server.config.request_timeout:g} s (--request-timeout)",
                                     kind="timeout_error")
                server.m_errors.labels(route, "timeout").inc()
                yield _sse(error.body())
            except Exception as exc:  # noqa: BLE001
                log.exception("stream on %s failed", route)
                status = 500
                error = RequestError(500, f"generation failed: {type(exc).__name__}", kind="server_error")
                server.m_errors.labels(route, "internal").inc()
                yield _sse(error.body())
            finally:
                await stream.aclose()
                if result is not None and self.kind == "generate":
                    out = json.dumps([{"generated_text": result.text}]).encode()
                elif result is not None:
                    full = _chat_response if self.kind == "chat" else _completion_response
                    out = json.dumps(full(self.model, result, self.id)).encode()
                else:
                    out = json.dumps((error or RequestError(499, "the client closed the stream")).body()).encode()
                    status = status if error else 499
                server._capture(http_request, route, body, out, status, started, stream=True)
                server.in_flight -= 1
            if self.kind != "generate":  # TGI's stream ends with the generated_text event, OpenAI's with [DONE]
                yield b"data: [DONE]\n\n"

        return StreamingResponse(_nonempty(events()), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _nonempty(events):  # noqa: ANN001, ANN202
    async for event in events:
        if event:
            yield event


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


# --- the SageMaker family (TGI's shapes) ---------------------------------------------------------------
async def _sagemaker(server: Server, payload: Any, deadline: float) -> Any:
    from entrypoints.engines import GenerationRequest

    payload = _object(payload, '{"inputs": ..., "parameters": {...}} or {"messages": [...]}')
    if "messages" in payload:
        return await _chat(server, payload, deadline)  # "stream": true streams OpenAI chunks (LMI's messages API)
    if "inputs" not in payload:
        raise RequestError(400, "'inputs' is required (or 'messages' for a chat request)", "inputs")
    inputs = payload["inputs"]
    texts = inputs if isinstance(inputs, list) else [inputs]
    if not texts or len(texts) > server.config.max_batch * 4:
        raise RequestError(400, f"'inputs' must be a string or a list of 1 to {server.config.max_batch * 4} strings", "inputs")
    params = _get(payload, "parameters", (dict,), default={})
    model, adapter = server.adapter_for(_get(params, "adapter_id", (str,), "parameters."), "parameters.adapter_id")
    sampling = server.sampling(params, "parameters.", "max_new_tokens")
    full_text = _get(params, "return_full_text", (bool,), "parameters.", default=False)
    if _get(payload, "stream", (bool,), default=False):  # TGI's stream: token events, the last with generated_text
        if not isinstance(inputs, str):
            raise RequestError(400, "'inputs' must be one string when 'stream' is true", "inputs")
        ids = server.raw_prompt(inputs, "inputs")
        server.check_fits(ids, sampling, "inputs")
        return Streamed("generate", model, GenerationRequest(ids, sampling, adapter), deadline, False)
    requests = []
    for index, text in enumerate(texts):
        where = "inputs" if not isinstance(inputs, list) else f"inputs[{index}]"
        ids = server.raw_prompt(text, where)
        server.check_fits(ids, sampling, where)
        requests.append(GenerationRequest(ids, sampling, adapter))
    results = await server.run_all(requests, deadline, model)
    return [{"generated_text": (text if full_text else "") + r.text} for text, r in zip(texts, results, strict=True)]


# --- the Vertex AI family ------------------------------------------------------------------------------
async def _vertex(server: Server, payload: Any, deadline: float) -> Any:
    from entrypoints.engines import GenerationRequest

    payload = _object(payload, '{"instances": [...], "parameters": {...}}')
    if "messages" in payload and "instances" not in payload:  # a chat body (Vertex's rawPredict / streamRawPredict)
        return await _chat(server, payload, deadline)
    instances = _get(payload, "instances", (list,), required=True)
    if not instances or len(instances) > server.config.max_batch * 4:
        raise RequestError(400, f"'instances' must hold 1 to {server.config.max_batch * 4} instances", "instances")
    params = _get(payload, "parameters", (dict,), default={})
    model, adapter = server.adapter_for(_get(params, "adapter_id", (str,), "parameters."), "parameters.adapter_id")
    requests = []
    for index, instance in enumerate(instances):
        where = f"instances[{index}]"
        if isinstance(instance, str):
            instance = {"prompt": instance}
        if not isinstance(instance, dict):
            raise RequestError(400, f"'{where}' must be a string or an object with 'prompt' or 'messages'", where)
        settings = {**params, **{k: v for k, v in instance.items() if k not in ("prompt", "messages", "inputs")}}
        max_name = "max_tokens" if "max_tokens" in settings else "max_new_tokens"
        sampling = server.sampling(settings, f"{where}." if max_name in instance else "parameters.", max_name)
        if "messages" in instance:
            ids = server.chat_prompt(instance["messages"], f"{where}.messages")
        else:
            key = "prompt" if "prompt" in instance or "inputs" not in instance else "inputs"
            ids = server.raw_prompt(instance.get(key), f"{where}.{key}")
        server.check_fits(ids, sampling, where)
        requests.append(GenerationRequest(ids, sampling, adapter))
    results = await server.run_all(requests, deadline, model)
    return {"predictions": [r.text for r in results]}


# --- the app ---------------------------------------------------------------------------------------
class _Metrics:
    """Outermost ASGI middleware: counts every response by route and status, with its latency."""

    def __init__(self, app, server: Server, routes: set[str]):  # noqa: ANN001
        self.app, self.server, self.routes = app, server, routes

    async def __call__(self, scope, receive, send):  # noqa: ANN001, ANN204
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in self.routes else "other"
        started = time.monotonic()
        status = {"code": 500}

        async def sending(message):  # noqa: ANN001, ANN202
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                self.server.m_requests.labels(route, str(status["code"])).inc()
                self.server.m_latency.labels(route).observe(time.monotonic() - started)
            await send(message)

        await self.app(scope, receive, sending)


class _BearerAuth:
    """Every route but the health checks needs ``Authorization: Bearer <key>`` when a key is set."""

    def __init__(self, app, key: str, open_paths: set[str]):  # noqa: ANN001
        self.app, self._key, self.open_paths = app, key.encode(), open_paths

    async def __call__(self, scope, receive, send):  # noqa: ANN001, ANN204
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            given = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = given.partition(b" ")
            if not (scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)):
                exc = RequestError(401, "missing or wrong API key. To fix: send 'Authorization: Bearer <key>'",
                                   kind="authentication_error", headers={"WWW-Authenticate": "Bearer"})
                return await _error_response(exc)(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(server: Server):  # noqa: ANN201
    """The Starlette app for ``server``: routes, auth, metrics, and the model loading in its lifespan."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    config = server.config
    health_paths = {"/ping", "/health", config.health_route}

    async def health(request):  # noqa: ANN001, ANN202
        if server.ready:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "failed" if server.failure else "loading", **({"error": server.failure} if server.failure else {})},
                            status_code=503)

    def generation(route: str, handler):  # noqa: ANN001, ANN202
        async def endpoint(request):  # noqa: ANN001, ANN202
            return await server.serve_request(request, route, lambda payload, deadline: handler(server, payload, deadline))
        return endpoint

    async def models(request):  # noqa: ANN001, ANN202
        created = _now()
        data = [{"id": name, "object": "model", "created": created, "owned_by": "launcher",
                 "root": name, "parent": None if adapter is None else server.base_name}
                for name, adapter in server.models.items()]
        return JSONResponse({"object": "list", "data": data})

    async def metrics(request):  # noqa: ANN001, ANN202
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(server.registry), media_type=CONTENT_TYPE_LATEST)

    routes = [Route(path, health, methods=["GET"]) for path in sorted(health_paths)]
    routes += [
        Route("/invocations", generation("/invocations", _sagemaker), methods=["POST"]),
        Route("/v1/chat/completions", generation("/v1/chat/completions", _chat), methods=["POST"]),
        Route("/v1/completions", generation("/v1/completions", _completion), methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    if config.predict_route not in {r.path for r in routes}:
        routes.append(Route(config.predict_route, generation(config.predict_route, _vertex), methods=["POST"]))

    @contextlib.asynccontextmanager
    async def lifespan(app):  # noqa: ANN001, ANN202
        task = asyncio.create_task(server.warm_up())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            await asyncio.to_thread(server.close)

    app = Starlette(routes=routes, lifespan=lifespan)
    wrapped = app
    if config.api_key:
        wrapped = _BearerAuth(wrapped, config.api_key, health_paths)
    return _Metrics(wrapped, server, {r.path for r in routes})


# --- the command line ----------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    env = os.environ
    parser = argparse.ArgumentParser(prog="python -m entrypoints.serve", description="Serve a model (and its LoRA adapters).")
    parser.add_argument("--model", default=env.get("LAUNCHER_MODEL_DIR") or env.get("AIP_STORAGE_URI")
                        or ("/opt/ml/model" if Path("/opt/ml/model").is_dir() else None),
                        help="A job's model dir (its adapter is served on its base) or a model folder; s3:// or gs:// "
                             "are downloaded (env LAUNCHER_MODEL_DIR, AIP_STORAGE_URI; default /opt/ml/model)")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR", help="Another adapter of the same base")
    parser.add_argument("--host", default=env.get("LAUNCHER_SERVE_HOST") or "127.0.0.1",
                        help="Default: env LAUNCHER_SERVE_HOST (a cloud image sets 0.0.0.0), else 127.0.0.1")
    parser.add_argument("--port", type=int, default=None,
                        help="Default: AIP_HTTP_PORT, SAGEMAKER_BIND_TO_PORT, else 8080")
    parser.add_argument("--api-key", default=None, help="Require 'Authorization: Bearer KEY' (prefer env LAUNCHER_API_KEY)")
    parser.add_argument("--behind-platform-auth", action="store_true", default=env.get("LAUNCHER_BEHIND_PLATFORM_AUTH") == "1",
                        help="SageMaker or Vertex AI authenticates callers in front of this container: bind any address without a key")
    parser.add_argument("--capture", default=env.get("LAUNCHER_CAPTURE"), metavar="DEST", help="Capture folder, s3:// or gs:// prefix")
    parser.add_argument("--capture-percent", type=float, default=float(env.get("LAUNCHER_CAPTURE_PERCENT") or 100.0))
    parser.add_argument("--capture-kms-key", default=env.get("LAUNCHER_CAPTURE_KMS_KEY") or None, metavar="KEY",
                        help="Encrypt capture objects with this KMS key (S3: SSE-KMS; GCS: a Cloud KMS key name, CMEK)")
    parser.add_argument("--capture-flush-s", type=float, default=10.0)
    parser.add_argument("--endpoint-name", default=env.get("LAUNCHER_ENDPOINT_NAME"), help="The endpoint's name in capture paths")
    parser.add_argument("--variant", default="AllTraffic")
    parser.add_argument("--max-new-tokens-cap", type=int, default=int(env.get("LAUNCHER_MAX_NEW_TOKENS_CAP") or 1024))
    parser.add_argument("--default-max-new-tokens", type=int, default=128)
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20)
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument("--max-concurrency", type=int, default=64)
    parser.add_argument("--engine", default=env.get("LAUNCHER_ENGINE", "auto"),
                        help="auto (vLLM with a GPU when installed, else transformers) | transformers | vllm (env LAUNCHER_ENGINE)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser


def parse_config(argv: list[str] | None = None, env: dict[str, str] | None = None) -> ServeConfig:
    """The serving config from the command line and environment; ConfigError (one line) when it is wrong.
    Imports nothing heavy, so a bad command line fails in milliseconds."""
    env = dict(os.environ if env is None else env)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # SageMaker starts serving containers as `docker run IMAGE serve`
        argv = argv[1:]

    class _Parser(argparse.ArgumentParser):
        def error(self, message):  # noqa: ANN001, ANN201
            raise ConfigError(f"{message}. To fix: see 'python -m entrypoints.serve --help'")

    parser = _parser()
    parser.__class__ = _Parser
    args = parser.parse_args(argv)
    if not args.model:
        raise ConfigError("no model to serve. To fix: pass --model DIR (a job's model dir or a model folder)")
    model = _model_path(args.model, "--model")
    adapters: dict[str, Path] = {}
    for item in args.adapter:
        name, eq, path = item.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
            raise ConfigError(f"--adapter '{item}' is not NAME=DIR with a simple name. To fix: --adapter support=/path/to/model")
        adapters[name] = _model_path(path, f"--adapter {name}")
        if not (adapters[name] / "adapter_config.json").is_file():
            raise ConfigError(f"--adapter {name}: {path} holds no adapter_config.json. To fix: point at a job's model dir")
    port = args.port
    if port is None:
        port = int(env.get("AIP_HTTP_PORT") or env.get("SAGEMAKER_BIND_TO_PORT") or DEFAULT_PORT)
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a port. To fix: pass 1-65535")
    key = args.api_key or env.get("LAUNCHER_API_KEY") or None
    if args.host not in LOCAL_HOSTS and not key and not args.behind_platform_auth:
        raise ConfigError(f"--host {args.host} would serve the model to the network without an API key. To fix: set "
                          "LAUNCHER_API_KEY (or --api-key), or bind --host 127.0.0.1")
    if not 0 <= args.capture_percent <= 100:
        raise ConfigError(f"--capture-percent {args.capture_percent:g} is not a percentage. To fix: pass 0 to 100")
    for name in ("max_new_tokens_cap", "max_body_bytes", "max_concurrency", "max_batch", "default_max_new_tokens"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1. To fix: pass a positive number")
    if args.request_timeout <= 0:
        raise ConfigError("--request-timeout must be above 0. To fix: pass seconds, e.g. 60")
    if args.engine not in ("auto", "transformers", "vllm"):
        raise ConfigError(f"--engine {args.engine} is unknown. To fix: pass auto, transformers or vllm")
    if args.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError("--engine vllm: vLLM is not installed in this Python. To fix: make vllm-venv, then run "
                          "this with .venv-vllm/bin/python (or pip install vllm)")
    device = args.device
    if device == "auto":
        device = "cuda" if any(Path("/dev").glob("nvidia[0-9]*")) else "cpu"
    return ServeConfig(
        model=model, adapters=adapters, host=args.host, port=port, api_key=key, capture=args.capture,
        capture_percent=args.capture_percent, capture_flush_s=args.capture_flush_s, capture_kms_key=args.capture_kms_key, endpoint_name=args.endpoint_name,
        variant=args.variant, max_new_tokens_cap=args.max_new_tokens_cap, default_max_new_tokens=args.default_max_new_tokens,
        max_body_bytes=args.max_body_bytes, request_timeout=args.request_timeout, max_concurrency=args.max_concurrency,
        engine=args.engine, device=device, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, threads=args.threads,
        health_route=env.get("AIP_HEALTH_ROUTE") or "/health", predict_route=env.get("AIP_PREDICT_ROUTE") or "/predict",
        behind_platform_auth=args.behind_platform_auth,
    )


def _model_path(value: str, option: str) -> Path:
    if "://" in value:  # downloaded (cached) through the one artifacts path
        from launcher import artifacts

        return artifacts.model_dir(value)
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{option} {value} is not a folder. To fix: point at a job's model dir or a saved model")
    if not (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise ConfigError(f"{option} {value} holds neither adapter_config.json nor config.json. To fix: point at a job's model dir")
    return path.absolute()


def run(config: ServeConfig) -> int:
    """Serve until SIGTERM/SIGINT (uvicorn's handlers: requests in flight finish, then the capture is flushed)."""
    import uvicorn

    server = Server(config)
    uv = uvicorn.Server(uvicorn.Config(create_app(server), host=config.host, port=config.port, log_level="info",
                                       timeout_graceful_shutdown=int(config.request_timeout) + 5, lifespan="on"))

    def fatal() -> None:
        uv.should_exit = True

    server.on_fatal = fatal
    uv.run()
    return 1 if server.failure else 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = parse_config(argv)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return 2
    except Exception as exc:  # noqa: BLE001 - a remote model that cannot be had, and the like
        from launcher.errors import LauncherError

        if isinstance(exc, LauncherError):
            print(f"Error: {exc}", file=sys.stderr, flush=True)
            return exc.exit_code
        raise
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
