"""The serving entrypoint against the finished job's tiny model: the three route families, limits, auth,
metrics, and one capture record per request (entrypoints.serve, entrypoints.engines, launcher.capture).

The servers here are real uvicorn servers on 127.0.0.1 (in a thread; one as a subprocess for SIGTERM),
driven over HTTP by httpx and by the real ``openai`` client.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import free_port

KEY = "test-key-7f3a9c1e5b"
PROMPT = "Client Bob Chen, age 40, risk moderate, cash $5,000. Write the summary."


class ThreadServer:
    """``entrypoints.serve`` in this process: a uvicorn server in a thread, ready once /ping answers 200."""

    def __init__(self, model: Path, **settings):
        import uvicorn

        from entrypoints.serve import Server, ServeConfig, create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = ServeConfig(model=model, port=self.port, threads=1, **settings)
        self.server = Server(config)
        self.uv = uvicorn.Server(uvicorn.Config(create_app(self.server), host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.uv.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/ping", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"the server did not become ready: {self.server.failure}")

    def stop(self) -> None:
        self.uv.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def model_dir(finished_job) -> Path:
    return finished_job / "model"


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    """One server for most tests: an API key, the job's adapter plus a second name for it, capture on."""
    capture = tmp_path_factory.mktemp("capture")
    server = ThreadServer(model_dir, adapters={"second": model_dir}, api_key=KEY, capture=str(capture),
                          capture_flush_s=0.2, max_new_tokens_cap=64, max_body_bytes=64 * 1024)
    server.capture_dir = capture
    yield server
    server.stop()


def post(served, path, body, key=KEY, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(kwargs.pop("headers", {}))
    if isinstance(body, (bytes, str)):
        return httpx.post(served.url + path, content=body, headers={"Content-Type": "application/json", **headers}, timeout=60, **kwargs)
    return httpx.post(served.url + path, json=body, headers=headers, timeout=60, **kwargs)


def records(served):
    from launcher.capture import read_records

    served.server.capture.flush()
    return list(read_records(served.capture_dir))


# --- the capture record format (pure) ---------------------------------------------------------------------
DOCUMENTED_KEYS = {"captureData", "eventMetadata", "eventVersion"}
SECTION_KEYS = {"observedContentType", "mode", "data", "encoding"}


def test_capture_record_has_sagemakers_documented_schema():
    from launcher.capture import decode, make_record, parse

    request = json.dumps({"inputs": "hi"}).encode()
    record = make_record(request, "application/json", b"\x00\xffnot json", "application/octet-stream",
                         inference_id="abc-1", extra={"latencyMs": 12.5, "status": 200})
    assert set(record) == DOCUMENTED_KEYS and record["eventVersion"] == "0"
    given, answer = record["captureData"]["endpointInput"], record["captureData"]["endpointOutput"]
    assert set(given) == SECTION_KEYS == set(answer)
    assert given == {"observedContentType": "application/json", "mode": "INPUT", "data": '{"inputs": "hi"}', "encoding": "JSON"}
    assert answer["mode"] == "OUTPUT" and answer["encoding"] == "BASE64" and isinstance(answer["data"], str)
    assert decode(answer) == b"\x00\xffnot json"
    meta = record["eventMetadata"]
    assert meta["inferenceId"] == "abc-1" and uuid.UUID(meta["eventId"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["inferenceTime"])
    assert meta["launcher"] == {"latencyMs": 12.5, "status": 200}
    # inferenceId appears only when the caller passed one; bad JSON under a JSON content type is base64
    plain = make_record(b"{broken", "application/json", b"[]", "application/json")
    assert "inferenceId" not in plain["eventMetadata"] and "launcher" not in plain["eventMetadata"]
    assert plain["captureData"]["endpointInput"]["encoding"] == "BASE64"
    parsed = parse(json.dumps(record))
    assert parsed.input_json() == {"inputs": "hi"} and parsed.inference_id == "abc-1" and parsed.latency_ms == 12.5
    assert parsed.status == 200
    # a SageMaker-written record (the documented example) parses too
    documented = ('{"captureData": {"endpointInput": {"observedContentType": "application/json", "mode": "INPUT", '
                  '"data": "{\\"inputs\\": \\"...\\"}", "encoding": "JSON"}, "endpointOutput": {"observedContentType": '
                  '"application/json", "mode": "OUTPUT", "data": "eyJnZW5lcmF0ZWRfdGV4dCI6ICIuLi4ifQ==", "encoding": "BASE64"}}, '
                  '"eventMetadata": {"eventId": "e", "inferenceId": "i", "inferenceTime": "2026-11-28T08:03:35Z"}, "eventVersion": "0"}')
    assert parse(documented).output_json() == {"generated_text": "..."}
    broken = json.loads(documented)
    del broken["captureData"]["endpointInput"]["encoding"]
    with pytest.raises(ValueError, match="endpointInput.encoding"):
        parse(broken)


def test_capture_writer_files_layout_flushes_and_sampling(tmp_path):
    from launcher.capture import CaptureWriter, make_record, read_records

    writer = CaptureWriter(tmp_path, "claims", max_records=3, flush_every_s=0.2)
    for n in range(3):  # size: the third record flushes
        writer.add(make_record(b"{}", "application/json", b"{}", "application/json", inference_id=f"s{n}",
                               inference_time=f"2026-11-28T0{8 + n % 2}:03:35Z"))
    assert writer.pending() == 0 and writer.written == 3
    paths = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()]
    assert sorted(p.rsplit("/", 1)[0] for p in paths) == ["claims/AllTraffic/2026/11/28/08", "claims/AllTraffic/2026/11/28/09"]
    assert all(re.fullmatch(r"claims/AllTraffic/2026/11/28/0[89]/\d\d-\d\d-[0-9a-f-]{36}\.jsonl", p) for p in paths)
    writer.add(make_record(b"{}", "application/json", b"{}", "application/json", inference_id="timed"))
    deadline = time.monotonic() + 5
    while writer.pending() and time.monotonic() < deadline:  # time: the timer flushes it
        time.sleep(0.05)
    assert writer.pending() == 0
    writer.add(make_record(b"{}", "application/json", b"{}", "application/json", inference_id="last"))
    writer.close()  # shutdown: the rest
    ids = sorted(r.inference_id for r in read_records(tmp_path))
    assert ids == ["last", "s0", "s1", "s2", "timed"]
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temporary file left
    assert not any(CaptureWriter(tmp_path / "none", "x", percent=0).sampled() for _ in range(200))
    sampled = CaptureWriter(tmp_path / "half", "x", percent=50)
    assert 50 < sum(sampled.sampled() for _ in range(400)) < 350


def test_capture_writer_uploads_to_s3_and_gcs(moto_server, gcs_emulator):
    from launcher import clouds
    from launcher.capture import CaptureWriter, make_record, parse

    s3 = clouds.aws_client("s3")
    s3.create_bucket(Bucket="caps")
    clouds.gcs_client().create_bucket("gcaps")
    for dest in ("s3://caps/data-capture", "gs://gcaps/data-capture"):
        writer = CaptureWriter(dest, "ep", flush_every_s=60)
        writer.add(make_record(b'{"inputs": "x"}', "application/json", b"[]", "application/json", inference_id=dest))
        writer.close()
        assert len(writer.files) == 1 and writer.files[0].startswith(dest + "/ep/AllTraffic/")
    key = writer.files[0].removeprefix("gs://gcaps/")
    assert parse(clouds.gcs_client().bucket("gcaps").blob(key).download_as_bytes()).inference_id == "gs://gcaps/data-capture"
    listed = s3.list_objects_v2(Bucket="caps")["Contents"]
    assert re.fullmatch(r"data-capture/ep/AllTraffic/\d{4}/\d\d/\d\d/\d\d/\d\d-\d\d-[0-9a-f-]{36}\.jsonl", listed[0]["Key"])
    body = s3.get_object(Bucket="caps", Key=listed[0]["Key"])["Body"].read()
    assert parse(body).input_json() == {"inputs": "x"}


def test_capture_objects_are_encrypted_with_the_key_named(moto_server, gcs_emulator):
    from fakes import gcs

    from launcher import clouds
    from launcher.capture import CaptureWriter, make_record

    clouds.aws_client("s3").create_bucket(Bucket="caps")
    clouds.gcs_client().create_bucket("gcaps")
    keys = {"s3://caps/dc": "arn:aws:kms:us-east-1:123456789012:key/capture",
            "gs://gcaps/dc": "projects/p/locations/us/keyRings/r/cryptoKeys/capture"}
    written = {}
    for dest, key in keys.items():
        writer = CaptureWriter(dest, "ep", flush_every_s=60, kms_key=key)
        writer.add(make_record(b'{"inputs": "x"}', "application/json", b"[]", "application/json"))
        writer.close()
        written[dest] = writer.files[0]
    head = clouds.aws_client("s3").head_object(Bucket="caps", Key=written["s3://caps/dc"].removeprefix("s3://caps/"))
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"].endswith("key/capture")  # SSE-KMS
    name = written["gs://gcaps/dc"].removeprefix("gs://gcaps/")
    assert gcs.kms_keys[("gcaps", name)] == keys["gs://gcaps/dc"]  # CMEK asked for on the upload


# --- the routes ---------------------------------------------------------------------------------------
def test_health_needs_no_key_and_models_lists_base_and_adapters(served, finished_job):
    assert httpx.get(served.url + "/ping").status_code == 200
    assert httpx.get(served.url + "/health").status_code == 200
    assert httpx.get(served.url + "/v1/models").status_code == 401
    models = httpx.get(served.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    ids = [m["id"] for m in models["data"]]
    assert ids == ["tiny-llama", finished_job.name, "second"]
    assert [m["parent"] for m in models["data"]] == [None, "tiny-llama", "tiny-llama"]


def test_sagemaker_invocations_text_and_chat(served):
    one = post(served, "/invocations", {"inputs": PROMPT, "parameters": {"max_new_tokens": 8}})
    assert one.status_code == 200, one.text
    assert isinstance(one.json(), list) and isinstance(one.json()[0]["generated_text"], str) and one.json()[0]["generated_text"]
    many = post(served, "/invocations", {"inputs": [PROMPT, "Client Eve"], "parameters": {"max_new_tokens": 4}})
    assert len(many.json()) == 2
    chat = post(served, "/invocations", {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8}).json()
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["usage"]["completion_tokens"] <= 8


def test_sagemaker_invocations_stream_tgi_tokens_and_chat_chunks(served):
    """"stream": true on /invocations (what InvokeEndpointWithResponseStream relays): TGI's token events for
    inputs, the last carrying the whole generated_text; OpenAI chunks for messages. Each is the same greedy
    answer as the whole one, and is captured whole."""
    from launcher.backends.base import streamed_text

    params = {"max_new_tokens": 8}
    whole = post(served, "/invocations", {"inputs": PROMPT, "parameters": params}).json()[0]["generated_text"]
    with httpx.stream("POST", served.url + "/invocations", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                      json={"inputs": PROMPT, "parameters": params, "stream": True}) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line.removeprefix("data:")) for line in answer.iter_lines() if line]
    assert len(events) > 2 and all(e["generated_text"] is None for e in events[:-1])
    assert "".join(e["token"]["text"] for e in events[:-1]) == events[-1]["generated_text"] == whole
    assert events[-1]["details"]["finish_reason"] in ("stop", "length")
    assert "".join(streamed_text([line.encode() + b"\n" for line in (f"data: {json.dumps(e)}" for e in events)], "x")) == whole
    chat = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8}
    text = post(served, "/invocations", chat).json()["choices"][0]["message"]["content"]
    with httpx.stream("POST", served.url + "/invocations", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                      json={**chat, "stream": True}) as answer:
        assert "".join(streamed_text(answer.iter_bytes(), "x")) == text
    captured = [json.loads(r.output_bytes()) for r in records(served)
                if r.extra["route"] == "/invocations" and json.loads(r.input_bytes()).get("stream") is True]
    assert [{"generated_text": whole}] in captured  # the stream captured as its whole answer
    assert any(isinstance(c, dict) and c["choices"][0]["message"]["content"] == text for c in captured)
    refused = post(served, "/invocations", {"inputs": [PROMPT, PROMPT], "stream": True})
    assert refused.status_code == 400 and "one string" in refused.json()["error"]["message"]


def test_vertex_instances_and_predictions(served):
    answer = post(served, "/predict", {"instances": [PROMPT, {"prompt": "Client Eve"}, {"messages": [{"role": "user", "content": PROMPT}]}],
                                       "parameters": {"max_new_tokens": 6}})
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert len(predictions) == 3 and all(isinstance(p, str) for p in predictions)


def test_openai_client_chat_completions_streaming_and_adapter_choice(served, finished_job):
    import openai

    client = openai.OpenAI(base_url=served.url + "/v1", api_key=KEY)
    assert [m.id for m in client.models.list()] == ["tiny-llama", finished_job.name, "second"]
    messages = [{"role": "user", "content": PROMPT}]
    whole = client.chat.completions.create(model=finished_job.name, messages=messages, max_tokens=12)
    assert whole.model == finished_job.name and whole.choices[0].finish_reason in ("stop", "length")
    text = whole.choices[0].message.content
    pieces = list(client.chat.completions.create(model=finished_job.name, messages=messages, max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
    assert streamed == text  # greedy: the stream is the same answer
    assert pieces[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert client.chat.completions.create(model="second", messages=messages, max_tokens=12).choices[0].message.content == text
    base = client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=12).choices[0].message.content
    assert base != text  # the bare base answers differently from the tuned adapter
    completion = client.completions.create(model="tiny-llama", prompt="Client Bob", max_tokens=5)
    assert completion.choices[0].text and completion.usage.completion_tokens <= 5
    chunks = list(client.completions.create(model="second", prompt="Client Bob", max_tokens=5, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == client.completions.create(model="second", prompt="Client Bob", max_tokens=5).choices[0].text
    with pytest.raises(openai.NotFoundError, match="nope"):
        client.chat.completions.create(model="nope", messages=messages, max_tokens=4)


def test_stream_ends_with_done_as_server_sent_events(served):
    with httpx.stream("POST", served.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                      json={"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 5, "stream": True}) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = [line for line in answer.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events) and events[-1] == "data: [DONE]"


def test_chat_prompt_is_the_training_prefix(served):
    from entrypoints import sequences
    from launcher.data import Example

    tokenizer = served.server.engine.tokenizer
    example = Example(messages=(("system", "Be brief."), ("user", PROMPT), ("assistant", "Client: Bob.")), source="t", line=1, fmt="chat")
    ids = served.server.chat_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}], "messages")
    assert ids == sequences.prompt_ids(tokenizer, example)
    full = sequences.tokenize(tokenizer, example, 512).input_ids
    assert full[: len(ids)] == ids  # exactly the tokens training saw before the answer


BAD = [
    (b'{"inputs": "x"', 400, "not valid JSON"),
    (b'[1, 2]', 400, "JSON object"),
    ({}, 400, "'inputs' is required"),
    ({"inputs": 7}, 400, "'inputs' must be a non-empty string"),
    ({"inputs": "x", "parameters": "fast"}, 400, "'parameters' must be an object"),
    ({"inputs": "x", "parameters": {"max_new_tokens": "ten"}}, 400, "'parameters.max_new_tokens' must be an integer"),
    ({"inputs": "x", "parameters": {"max_new_tokens": 10 ** 9}}, 400, "'parameters.max_new_tokens' is 1000000000, above this endpoint's cap of 64"),
    ({"inputs": "x", "parameters": {"temperature": 9}}, 400, "'parameters.temperature' must be between 0 and 2"),
    ({"inputs": "x", "parameters": {"adapter_id": "nope"}}, 404, "'nope' does not exist"),
    ({"messages": "hi"}, 400, "'messages' must be a non-empty list"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 400, "'messages[0].role' must be system, user or assistant"),
    ({"messages": [{"role": "user"}]}, 400, "'messages[0].content' is required"),
    ({"inputs": "x " * 5000, "parameters": {"max_new_tokens": 4}}, 400, "beyond the model's context"),
    (b'{"inputs": "' + b"x" * 70_000 + b'"}', 413, "larger than this endpoint's limit of 65536 bytes"),
]


def test_bad_requests_are_one_clear_error_and_the_server_lives_on(served):
    for body, status, message in BAD:
        answer = post(served, "/invocations", body)
        assert answer.status_code == status, (body if isinstance(body, dict) else body[:40], answer.text)
        assert message in answer.json()["error"]["message"], answer.text
    for path, body, param in [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 10 ** 6}, "max_tokens"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
        ("/v1/completions", {"prompt": ["a", "b"]}, "prompt"),
        ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, "model"),
        ("/predict", {"instances": []}, "instances"),
        ("/predict", {"instances": [3]}, "instances[0]"),
    ]:
        answer = post(served, path, body)
        assert answer.status_code in (400, 404) and answer.json()["error"]["param"] == param, answer.text
    good = post(served, "/invocations", {"inputs": PROMPT, "parameters": {"max_new_tokens": 4}})
    assert good.status_code == 200 and good.json()[0]["generated_text"]


def test_api_key_required_rejected_requests_not_captured_and_key_never_recorded(served):
    marker = f"auth-{uuid.uuid4()}"
    for key in (None, "wrong-key", KEY[:-1]):
        answer = post(served, "/invocations", {"inputs": marker}, key=key)
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert httpx.get(served.url + "/metrics").status_code == 401
    assert post(served, "/invocations", {"inputs": "ok " + marker, "parameters": {"max_new_tokens": 2}}).status_code == 200
    found = [r for r in records(served) if marker in r.input_bytes().decode()]
    assert [r.input_json()["inputs"] for r in found] == ["ok " + marker]  # only the authenticated one
    for path in served.capture_dir.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text()


def test_metrics_count_requests_tokens_and_errors(served):
    post(served, "/invocations", {"inputs": PROMPT, "parameters": {"max_new_tokens": 3}})
    post(served, "/invocations", b"{bad")
    text = httpx.get(served.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert re.search(r'launcher_requests_total\{route="/invocations",status="200"\} [1-9]', text)
    assert re.search(r'launcher_requests_total\{route="/invocations",status="400"\} [1-9]', text)
    assert re.search(r'launcher_request_latency_seconds_bucket\{le="\+Inf",route="/invocations"\} [1-9]', text)
    assert re.search(r"launcher_generated_tokens_total\{model=\"[^\"]+\"\} [1-9]", text)
    assert re.search(r'launcher_errors_total\{kind="bad_request",route="/invocations"\} [1-9]', text)
    assert "launcher_in_flight " in text and "launcher_queue_depth " in text and "launcher_ready 1.0" in text


def test_one_capture_record_per_request_under_concurrent_load_and_requests_share_batches(served):
    tag = uuid.uuid4().hex[:8]
    calls = [("/invocations", {"inputs": PROMPT, "parameters": {"max_new_tokens": 6}}),
             ("/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 6}),
             ("/v1/chat/completions", {"model": "second", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 6, "stream": True}),
             ("/predict", {"instances": [PROMPT], "parameters": {"max_new_tokens": 6}}),
             ("/v1/completions", {"prompt": PROMPT, "max_tokens": 6, "model": "tiny-llama"})]
    batches_before = served.server.engine.batches
    jobs = [(f"{tag}-{n}", *calls[n % len(calls)]) for n in range(30)]

    def send(job):
        inference_id, path, body = job
        return post(served, path, body, headers={"X-Amzn-SageMaker-Inference-Id": inference_id}).status_code

    with ThreadPoolExecutor(max_workers=15) as pool:
        statuses = list(pool.map(send, jobs))
    assert statuses == [200] * len(jobs)
    mine = [r for r in records(served) if (r.inference_id or "").startswith(tag)]
    assert sorted(r.inference_id for r in mine) == sorted(inference_id for inference_id, _, _ in jobs)
    assert all(r.status == 200 and r.latency_ms > 0 and r.output_json() for r in mine)
    assert {r.extra.get("stream") for r in mine} == {None, True}
    assert served.server.engine.batches - batches_before < len(jobs)  # batched, not one forward at a time


# --- limits on their own servers ------------------------------------------------------------------------
def test_concurrency_limit_is_503_with_retry_after(model_dir):
    server = ThreadServer(model_dir, max_concurrency=1, max_new_tokens_cap=256)
    try:
        def send(_):
            return httpx.post(server.url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 200, "stop": ["@@never@@"]}, timeout=60)

        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(pool.map(send, range(6)))
        codes = sorted(a.status_code for a in answers)
        assert 200 in codes and 503 in codes, codes
        refused = next(a for a in answers if a.status_code == 503)
        assert refused.headers["retry-after"] == "1" and "limit of 1 concurrent" in refused.json()["error"]["message"]
    finally:
        server.stop()


def test_request_timeout_is_504(model_dir, tmp_path):
    from launcher.capture import read_records

    server = ThreadServer(model_dir, request_timeout=0.05, max_new_tokens_cap=512, capture=str(tmp_path), capture_flush_s=60)
    try:
        answer = httpx.post(server.url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 500, "stop": ["@@never@@"]}, timeout=60)
        assert answer.status_code == 504 and "did not finish within 0.05 s" in answer.json()["error"]["message"]
        assert httpx.get(server.url + "/ping").status_code == 200
    finally:
        server.stop()
    assert [r.status for r in read_records(tmp_path)] == [504]


def test_binding_beyond_localhost_without_a_key_is_refused(model_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("LAUNCHER_API_KEY", None)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "entrypoints.serve", "--model", str(model_dir), "--host", "0.0.0.0"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: --host 0.0.0.0 would serve the model")
    assert "To fix:" in result.stderr and time.monotonic() - started < 20
    bad = subprocess.run([sys.executable, "-m", "entrypoints.serve", "--model", str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("Error: --model") and bad.stderr.count("\n") == 1


@pytest.mark.slow
def test_sigterm_under_load_loses_no_capture_record(model_dir, tmp_path):
    port = free_port()
    capture = tmp_path / "capture"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "LAUNCHER_API_KEY": KEY}
    log = open(tmp_path / "server.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "entrypoints.serve", "--model", str(model_dir), "--port", str(port),
                                "--capture", str(capture), "--capture-flush-s", "600", "--threads", "1"],
                               stdout=log, stderr=log, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/ping", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError((tmp_path / "server.log").read_text())
        answered = []

        def send(n):
            try:
                answer = httpx.post(url + "/v1/chat/completions", timeout=60, headers={"Authorization": f"Bearer {KEY}"},
                                    json={"messages": [{"role": "user", "content": f"{PROMPT} {n}"}], "max_tokens": 16})
                answered.append(answer.status_code)
            except httpx.TransportError:
                pass  # refused once the server stopped accepting: never reached it

        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(send, n) for n in range(40)]
            while len(answered) < 8:
                time.sleep(0.01)
            process.send_signal(signal.SIGTERM)
            for future in futures:
                future.result()
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its graceful shutdown
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    from launcher.capture import read_records

    got = list(read_records(capture))
    assert answered and set(answered) == {200}
    assert len(got) == len(answered)  # every answered request was captured; the flush ran at shutdown
    text = (tmp_path / "server.log").read_text()
    assert "capture: " in text and KEY not in text
