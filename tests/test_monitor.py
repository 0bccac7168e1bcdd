"""The monitor end to end on captured traffic: readers (every encoding and payload shape, local, S3 and
GCS, malformed records counted and skipped), grounding (planted facts flagged with their spans, derived
numbers not), drift (caught per side, not raised on the baseline's own distribution), the poller's
exactly-once cursor under a poller killed at every step, conditional state writes, the HTML report, the
CLI contract and what training writes for it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from launcher.capture import make_record
from launcher.cli.main import app
from test_monitor_sinks import receiver  # noqa: F401 - the webhook receiver fixture

REPO = Path(__file__).parents[1]
ROWS = [json.loads(line) for line in (REPO / "examples/data/train.jsonl").read_text().splitlines()]
PLANTED = " The client also holds $123,456 in Acme Bonds under O.C.G.A. 34-9-261."


def cli(*args: str):
    return CliRunner().invoke(app, list(map(str, args)), catch_exceptions=False)


def chat_pair(index: int) -> tuple[list[dict], str]:
    messages = ROWS[index]["messages"]
    return messages[:-1], messages[-1]["content"]


def prompt_text(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages)


def chat_record(index: int, answer: str | None = None, *, status: int = 200, latency: float = 120.0, second: int = 0) -> dict:
    messages, text = chat_pair(index)
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text if answer is None else answer},
                         "finish_reason": "stop"}]}
    if status != 200:
        body = {"error": {"message": "boom"}}
    return make_record(json.dumps({"messages": messages}).encode(), "application/json", json.dumps(body).encode(), "application/json",
                       event_id=f"event-{index}", inference_time=f"2026-12-01T10:{second // 60 % 60:02d}:{second % 60:02d}Z",
                       extra={"latencyMs": latency, "status": status})


def write_capture(folder: Path, name: str, records: list[dict | str]) -> Path:
    path = folder / "claims/AllTraffic/2026/12/01/10" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def baseline_dir(tmp_path_factory) -> Path:
    from monitoring.baseline import build_baseline

    folder = tmp_path_factory.mktemp("baseline")
    pairs = [(prompt_text(chat_pair(i)[0]), chat_pair(i)[1]) for i in range(400)]
    build_baseline(pairs, embeddings=False, source="examples/data/train.jsonl[:400]",
                   latencies_ms=[120.0] * len(pairs)).save(folder)
    return folder


# --- readers ----------------------------------------------------------------------------------------------
def test_every_payload_shape_and_encoding_reads_and_malformed_records_are_counted(tmp_path):
    from monitoring.records import list_objects, read_object

    messages, text = chat_pair(0)
    tgi = make_record(json.dumps({"inputs": "Client Ann", "parameters": {"max_new_tokens": 8}}).encode(), "application/json",
                      json.dumps([{"generated_text": " is 40.", "details": {"finish_reason": "length"}}]).encode(), "application/json",
                      event_id="tgi")
    vertex = make_record(json.dumps({"instances": [{"messages": messages}, {"prompt": "Client Bo"}]}).encode(), "application/json",
                         json.dumps({"predictions": [text, "Bo is 50."]}).encode(), "application/json", event_id="vx")
    completion = make_record(json.dumps({"prompt": "Client Cy"}).encode(), "application/json",
                             json.dumps({"choices": [{"text": " is 60.", "finish_reason": "stop"}]}).encode(), "application/json",
                             event_id="cmpl")
    based = make_record(b"\xff" + json.dumps({"messages": messages}).encode(), "application/octet-stream",
                        json.dumps({"choices": [{"message": {"content": text}}]}).encode(), "application/json", event_id="b64")
    based["captureData"]["endpointInput"] = {"observedContentType": "application/json", "mode": "INPUT", "encoding": "BASE64",
                                             "data": base64.b64encode(json.dumps({"messages": messages}).encode()).decode()}
    csv = make_record(b'"Client Di, age 70"\n', "text/csv", b'"Di is 70."\n', "text/csv", event_id="csv")
    failed = chat_record(1, status=500)
    broken = [
        "not json",
        json.dumps({"captureData": {}, "eventMetadata": {"eventId": "x"}, "eventVersion": "0"}),  # no inferenceTime
        json.dumps(make_record(b'{"foo": 1}', "application/json", b'{"bar": 2}', "application/json")),  # a shape we do not know
        json.dumps({**make_record(b'{"inputs": "x"}', "application/json", b"[]", "application/json"),
                    "captureData": {"endpointInput": {"observedContentType": "application/json", "mode": "INPUT",
                                                      "encoding": "JSON", "data": '{"inputs": "x"}'}}}),  # input only
    ]
    write_capture(tmp_path, "a", [tgi, vertex, completion, based, csv, failed, *broken])
    objects = list_objects(str(tmp_path))
    assert [o.key for o in objects] == ["claims/AllTraffic/2026/12/01/10/a.jsonl"]
    exchanges, skipped = read_object(str(tmp_path), objects[0])
    got = {e.event_id: e for e in exchanges}
    assert got["tgi"].prompt == "Client Ann" and got["tgi"].response == " is 40." and got["tgi"].finish_reason == "length"
    assert got["vx#0"].response == text and got["vx#1"].prompt == "Client Bo"  # one exchange per instance
    assert got["vx#0"].prompt == prompt_text(messages)  # every turn's text, as the model saw it
    assert got["cmpl"].response == " is 60." and got["b64"].prompt == prompt_text(messages)
    assert got["csv"].prompt == "Client Di, age 70" and got["csv"].response == "Di is 70."
    assert got["event-1"].ok is False and got["event-1"].status == 500  # counted for the error rate, not scored
    assert len(skipped) == 4 and [s.where.rsplit(":", 1)[1] for s in skipped] == ["7", "8", "9", "10"]
    whys = " | ".join(s.why for s in skipped)
    assert "not JSON" in whys and "inferenceTime" in whys and "no messages, instances, inputs or prompt" in whys and "input-only" in whys
    assert list_objects(str(tmp_path / "nothing-yet")) == []  # an endpoint with no traffic is not an error


def test_s3_and_gcs_sources_read_the_same_records(moto_server, gcs_emulator, tmp_path):
    import boto3

    from launcher import clouds
    from monitoring.records import list_objects, read_object

    body = "".join(json.dumps(chat_record(i, second=i)) + "\n" for i in range(3)).encode()
    boto3.client("s3").create_bucket(Bucket="capture-bucket")
    boto3.client("s3").put_object(Bucket="capture-bucket", Key="launcher/capture/claims/AllTraffic/2026/12/01/10/x.jsonl", Body=body)
    clouds.gcs_client().create_bucket("gcs-capture")
    clouds.gcs_client().bucket("gcs-capture").blob("launcher/capture/claims/AllTraffic/2026/12/01/10/x.jsonl").upload_from_string(body)
    for source in ("s3://capture-bucket/launcher/capture/", "gs://gcs-capture/launcher/capture/"):
        objects = list_objects(source)
        assert [o.key for o in objects] == ["claims/AllTraffic/2026/12/01/10/x.jsonl"] and objects[0].version
        exchanges, skipped = read_object(source, objects[0])
        assert [e.event_id for e in exchanges] == ["event-0", "event-1", "event-2"] and not skipped


# --- grounding ------------------------------------------------------------------------------------------
def test_grounding_flags_planted_facts_with_their_spans_and_accepts_derived_numbers():
    from monitoring.grounding import ground

    prompt = "Client: Ann Lee\nAge: 40\nWeekly wage: $1,200\nHoldings: bond fund $30,000; growth fund $10,000\nGoal: retire at 62"
    clean = ground(prompt, "Summary for Ann Lee, 40. Holdings: bond fund $30,000, growth fund $10,000.")
    assert not clean.flagged and clean.score == 0 and clean.facts == 4
    derived = ground(prompt, "Ann Lee holds $40,000 in total (75% in bonds); two-thirds of her wage is $800 a week; "
                             "retirement is 22 years away.")
    assert not derived.flagged, derived
    assert set(derived.derived) == {"$40,000", "75%", "$800", "22"}  # sum, ratio, 2/3, difference
    made_up = ground(prompt, "Ann Lee holds $45,500 with Barclays Wealth since 3 March 2019, per 29 U.S.C. § 2601.")
    assert made_up.flagged and set(made_up.unsupported) == {"$45,500", "Barclays Wealth", "3 March 2019", "29 U.S.C. § 2601"}
    assert made_up.score == pytest.approx(4 / 5)  # Ann Lee is supported
    assert ground(prompt, "Ann Lee holds $40,100.").unsupported == ["$40,100"]  # near a sum is not a sum


# --- drift ----------------------------------------------------------------------------------------------
def test_drift_is_caught_per_side_and_not_raised_on_the_baselines_own_distribution(baseline_dir):
    from monitoring.baseline import Baseline
    from monitoring.window import evaluate_window

    baseline = Baseline.load(baseline_dir)
    same = [(prompt_text(chat_pair(i)[0]), chat_pair(i)[1]) for i in range(400, 600)]
    quiet = evaluate_window(baseline, same, embeddings=False)
    assert not quiet.drifted("input") and not quiet.drifted("output") and not quiet.hallucination.breached
    short = [(p, r.split("\n")[0]) for p, r in same]
    assert evaluate_window(baseline, short, embeddings=False).drift["output"]["output.response_words"].drifted
    refusing = [(p, "I'm sorry, but I cannot help with that." if i % 4 == 0 else r) for i, (p, r) in enumerate(same)]
    refused = evaluate_window(baseline, refusing, embeddings=False)
    assert refused.drift["output"]["output.refusal"].drifted and not refused.drifted("input")
    topic = [("Claimant: Joe Ruiz\nInjury: back strain at the warehouse on 2 May 2026\nWeekly wage: $900\nLost days: 14\n"
              "Employer: Acme Freight\nDoctor: Dr. Patel\nCarrier: Zenith Mutual\nClaim: WC-2026-0411", r) for _, r in same]
    assert evaluate_window(baseline, topic, embeddings=False).drifted("input")


def test_false_alarms_stay_within_the_budget_over_null_windows(baseline_dir):
    """40 windows drawn from the baseline's own distribution (bootstrap resamples of held-out records):
    the family-wise budget (alpha 0.01 per window) allows ~0.4 false alarms; more than 2 is a broken
    correction."""
    import random

    from monitoring.baseline import Baseline
    from monitoring.window import evaluate_window

    baseline = Baseline.load(baseline_dir)
    held_out = [(prompt_text(chat_pair(i)[0]), chat_pair(i)[1]) for i in range(400, 1200)]
    rng = random.Random(7)
    alarms = sum(bool(r.drifted("input") or r.drifted("output"))
                 for r in (evaluate_window(baseline, rng.sample(held_out, 100), embeddings=False) for _ in range(40)))
    assert alarms <= 2


@pytest.mark.slow
def test_embedding_drift_sees_a_topic_shift_the_descriptors_cannot():
    """Prompts of the same length and shape on another subject: only the embeddings tell."""
    from monitoring.baseline import build_baseline
    from monitoring.window import evaluate_window

    baseline = build_baseline([(prompt_text(chat_pair(i)[0]), chat_pair(i)[1]) for i in range(150)])
    assert baseline.embeddings["prompt"].shape == (150, 384)
    same = [(prompt_text(chat_pair(i)[0]), chat_pair(i)[1]) for i in range(400, 500)]
    quiet = evaluate_window(baseline, same)
    assert not quiet.drift["input"]["input.embedding"].drifted and not quiet.drift["output"]["output.embedding"].drifted
    assert quiet.scores[0].support and all(0 <= s <= 1.01 for s in quiet.scores[0].support)
    swapped = [(p.replace("Holdings", "Injuries").replace("fund", "fracture").replace("Cash", "Wage").replace("Goals", "Treatment")
                 .replace("Risk", "Severity").replace("stocks", "sprains").replace("Changes", "Restrictions"), r) for p, r in same]
    shifted = evaluate_window(baseline, swapped)
    assert shifted.drift["input"]["input.embedding"].drifted


# --- the poller -----------------------------------------------------------------------------------------
def traffic(folder: Path) -> None:
    """Four capture objects of 60 records: clean, clean, a third with planted facts, a fourth refusing half."""
    for part in range(4):
        records = []
        for i in range(part * 60, part * 60 + 60):
            answer = chat_pair(600 + i)[1]
            if part >= 2 and i % 3 == 0:
                answer += PLANTED
            if part == 3 and i % 2 == 0:
                answer = "I cannot help with that."
            records.append(chat_record(600 + i, answer, second=i))
        write_capture(folder, f"part-{part}", records + (["not json"] if part == 0 else []))


def poll_process(source: Path, baseline: Path, state: Path, hook: str, crash_at: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "LAUNCHER_MONITOR_CRASH_AT": crash_at, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "launcher.cli.main", "monitor", "poll", "--source", str(source), "--baseline",
                           str(baseline), "--state", str(state), "--window", "100", "--no-embeddings", "--sink", hook, "--json"],
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_a_poller_killed_at_any_step_scores_each_record_once_and_sends_each_alert_once(baseline_dir, tmp_path, receiver):
    """Killed after reading, after scoring, after committing, and after a sink took an alert: the next poll
    ends where an uninterrupted one does (same totals, windows and alerts), and the only alert ever
    delivered twice is the one a sink took just before the kill, with the same id (receivers dedupe it)."""
    traffic(tmp_path / "capture")
    hook = receiver()
    clean = poll_process(tmp_path / "capture", baseline_dir, tmp_path / "clean/state.json", hook.url)
    assert clean.returncode == 0, clean.stderr
    expected = json.loads(clean.stdout)
    assert expected["records"] == 240 and expected["skipped"] == 1 and len(expected["windows"]) == 2 and expected["pending"] == 40
    expected_ids = sorted(a["id"] for a in expected["alerts"])
    assert {a["metric"] for a in expected["alerts"]} >= {"hallucination_rate", "output.refusal"}
    assert sorted(json.loads(r["body"])["id"] for r in hook.requests) == expected_ids
    for point in ("after-read", "after-score", "after-commit", "after-send"):
        hook.requests.clear()
        state = tmp_path / point / "state.json"
        killed = poll_process(tmp_path / "capture", baseline_dir, state, hook.url, crash_at=point)
        assert killed.returncode == 137, (point, killed.stderr)
        again = poll_process(tmp_path / "capture", baseline_dir, state, hook.url)
        assert again.returncode == 0, (point, again.stderr)
        final = json.loads(state.read_text())
        assert final["totals"] == expected["totals"], point  # every record scored once: none lost, none twice
        assert [w["id"] for w in final["windows"]] == [w["id"] for w in expected["windows"]], point
        ids = [json.loads(r["body"])["id"] for r in hook.requests]
        assert sorted(set(ids)) == expected_ids, point  # every alert delivered
        repeats = len(ids) - len(set(ids))
        assert repeats == (1 if point == "after-send" else 0), (point, ids)
        nothing_new = poll_process(tmp_path / "capture", baseline_dir, state, hook.url)
        assert json.loads(nothing_new.stdout)["records"] == 0 and len(hook.requests) == len(ids)


def test_two_pollers_on_one_state_never_both_commit(moto_server, gcs_emulator, tmp_path):
    import boto3

    from launcher import clouds
    from monitoring import state

    boto3.client("s3").create_bucket(Bucket="state-bucket")
    clouds.gcs_client().create_bucket("state-gcs")
    for uri in (str(tmp_path / "state.json"), "s3://state-bucket/monitor/state.json", "gs://state-gcs/monitor/state.json"):
        empty, none = state.load(uri)
        assert empty == {} and none is None
        token = state.save(uri, {"n": 1}, None)
        mine, my_token = state.load(uri)
        theirs, their_token = state.load(uri)
        assert mine == {"n": 1} and my_token == their_token == token
        state.save(uri, {"n": 2}, their_token)  # the other poller commits first
        with pytest.raises(state.StateConflict, match="another poller updated"):
            state.save(uri, {"n": 3}, my_token)
        with pytest.raises(state.StateConflict):
            state.save(uri, {"n": 4}, None)  # nor may a poller that found none create it over the other's
        assert state.load(uri)[0] == {"n": 2}


def test_poll_through_the_cli_flags_reports_and_alerts_once(baseline_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LAUNCHER_HOME", str(tmp_path / "home"))
    traffic(tmp_path / "capture")
    first = cli("monitor", "poll", "--source", tmp_path / "capture", "--baseline", baseline_dir, "--window", "100",
                "--no-embeddings", "--sink", "log://", "--json")
    assert first.exit_code == 0, first.output
    result = json.loads(first.stdout)
    assert result["records"] == 240 and result["skipped"] == 1 and result["flagged_count"] == 30
    item = result["flagged"][0]
    assert item["eventId"].startswith("event-") and set(item["unsupported"]) == {"$123,456", "Acme Bonds", "O.C.G.A. 34-9-261"}
    first_window, second_window = result["windows"]
    assert not any(first_window["drifted"].values()) and second_window["drifted"]["output"]
    assert second_window["drift"]["output"]["output.refusal"]["drifted"] and second_window["hallucination"]["breached"]
    assert second_window["unsupported_share"]["breached"] and not first_window["unsupported_share"]["breached"]
    assert {"statistic", "p_value", "threshold", "drifted"} <= set(second_window["drift"]["output"]["output.refusal"])
    alerts = {a["metric"]: a for a in result["alerts"]}
    assert alerts["hallucination_rate"]["kind"] == "hallucination" and alerts["hallucination_rate"]["examples"]
    assert alerts["hallucination_rate"]["examples"][0]["unsupported"] and alerts["unsupported_fact_share"]["state"] == "firing"
    report = Path(second_window["report"]).read_text()
    assert "<mark>$123,456</mark>" in report and "data:image/png;base64," in report and "DRIFTED" in report
    again = json.loads(cli("monitor", "poll", "--source", tmp_path / "capture", "--baseline", baseline_dir, "--window", "100",
                           "--no-embeddings", "--json").stdout)
    assert again["records"] == 0 and again["alerts"] == [] and again["totals"]["records"] == 240
    human = cli("monitor", "poll", "--source", tmp_path / "capture", "--baseline", baseline_dir, "--window", "100",
                "--no-embeddings", "--flush")
    assert "Window" in human.stdout and "40 records" in human.stdout  # the partial window, flushed


def test_bad_monitor_input_is_one_line_and_exit_2(baseline_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LAUNCHER_HOME", str(tmp_path / "home"))
    cases = [
        (["monitor", "poll", "--source", tmp_path, "--baseline", tmp_path / "none"], "no baseline at"),
        (["monitor", "poll", "--source", tmp_path, "--baseline", baseline_dir, "--sink", "smtp://me"], "smtp://me"),
        (["monitor", "poll", "--source", tmp_path], "needs --source"),
        (["monitor", "poll", "--endpoint", "ghost"], "has no monitor attached"),
        (["monitor", "watch", "--every", "often", "--source", tmp_path, "--baseline", baseline_dir], "--every often is not a duration"),
        (["monitor", "poll", "--source", tmp_path, "--baseline", baseline_dir, "--window", "1"], "--window 1 is too small"),
        (["monitor", "baseline", "--source", tmp_path / "empty", "--out", tmp_path / "b", "--no-embeddings"], "no records"),
    ]
    for args, message in cases:
        result = cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and result.stderr.count("\n") == 1, (args, result.stderr)
    assert not (tmp_path / "b").exists()


def test_monitor_baseline_from_a_capture_window(tmp_path):
    from monitoring.baseline import Baseline

    write_capture(tmp_path / "capture", "good", [chat_record(i, second=i) for i in range(50)])
    built = cli("monitor", "baseline", "--source", tmp_path / "capture", "--out", tmp_path / "base", "--no-embeddings", "--json")
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["records"] == 50
    baseline = Baseline.load(tmp_path / "base")
    assert baseline.records == 50 and baseline.latency_ms == {"p50": 120.0, "p99": 120.0} and baseline.hallucination_rate == 0.0


def test_training_writes_the_monitors_baseline(finished_job):
    from monitoring.baseline import Baseline

    baseline = Baseline.load(finished_job / "model")
    assert baseline.records == 4 and len(baseline.pairs) == 4  # eval_samples: each eval prompt and the tuned answer
    assert baseline.pairs[0][0].startswith("Client ") and set(baseline.descriptors) >= {"input.prompt_words", "output.refusal"}
    assert "training evaluation" in baseline.source and baseline.embeddings is None  # embedded by the monitor, not in training


def test_deploy_attaches_a_monitor_that_poll_endpoint_uses(tmp_path, monkeypatch, baseline_dir):
    from launcher import index

    monkeypatch.setenv("LAUNCHER_HOME", str(tmp_path / "home"))
    write_capture(tmp_path / "capture", "a", [chat_record(i, second=i) for i in range(30)])
    index.record_endpoint("claims", "local", "now", {}, {"source": str(tmp_path / "capture"), "baseline": str(baseline_dir),
                                                          "sinks": ["log://"]})
    index.record_endpoint("claims", "local", "later", {})  # a re-deploy without --monitor-sink keeps the monitor
    polled = cli("monitor", "poll", "--endpoint", "claims", "--window", "20", "--no-embeddings", "--json")
    assert polled.exit_code == 0, polled.output
    assert json.loads(polled.stdout)["records"] == 30 and json.loads(polled.stdout)["endpoint"] == "claims"


def test_a_sagemaker_capture_without_status_takes_the_error_rate_from_cloudwatch(moto_server, baseline_dir, tmp_path, monkeypatch):
    """SageMaker's own capture records carry no status or latency: the window's error rate and p99 come
    from the endpoint's AWS/SageMaker metrics, and a 30% 5xx rate alerts."""
    import datetime as dt

    import boto3

    monkeypatch.setenv("LAUNCHER_HOME", str(tmp_path / "home"))
    now = dt.datetime.now(dt.UTC)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    records = []
    for i in range(30):
        record = chat_record(i, second=i)
        record["eventMetadata"] = {"eventId": f"sm-{i}", "inferenceTime": stamp}  # SageMaker's: no launcher extras
        records.append(json.dumps(record))
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="sm-capture")
    s3.put_object(Bucket="sm-capture", Key=f"capture/claims/AllTraffic/{now:%Y/%m/%d/%H}/a.jsonl", Body="\n".join(records).encode())
    dims = [{"Name": "EndpointName", "Value": "claims"}, {"Name": "VariantName", "Value": "AllTraffic"}]
    boto3.client("cloudwatch").put_metric_data(Namespace="AWS/SageMaker", MetricData=[
        {"MetricName": "Invocations", "Dimensions": dims, "Value": 30.0, "Timestamp": now},
        {"MetricName": "Invocation5XXErrors", "Dimensions": dims, "Value": 9.0, "Timestamp": now},
        {"MetricName": "ModelLatency", "Dimensions": dims, "Value": 250000.0, "Unit": "Microseconds", "Timestamp": now}])
    polled = cli("monitor", "poll", "--source", "s3://sm-capture/capture/", "--baseline", baseline_dir, "--window", "30",
                 "--no-embeddings", "--latency-p99-ms", "200", "--json")
    assert polled.exit_code == 0, polled.output
    result = json.loads(polled.stdout)
    assert result["endpoint"] == "claims"
    operational = result["windows"][0]["operational"]
    assert operational["error_rate"]["value"] == pytest.approx(0.3) and operational["latency_p99_ms"]["value"] == pytest.approx(250.0)
    assert {(a["kind"], a["metric"]) for a in result["alerts"]} >= {("operational", "error_rate"), ("operational", "latency_p99_ms")}


def test_watch_polls_on_a_schedule_and_picks_up_new_traffic(baseline_dir, tmp_path, monkeypatch):
    """Two polls on a schedule: the first reads what is there, the second only what arrived between them."""
    from launcher.cli import monitor

    monkeypatch.setenv("LAUNCHER_HOME", str(tmp_path / "home"))
    write_capture(tmp_path / "capture", "a", [chat_record(i, second=i) for i in range(20)])
    waits = []

    def between_polls(seconds: float) -> None:  # new traffic arrives while the watcher waits
        waits.append(seconds)
        write_capture(tmp_path / "capture", "b", [chat_record(i, second=i) for i in range(20, 30)])

    monkeypatch.setattr(monitor.time, "sleep", between_polls)
    watched = cli("monitor", "watch", "--every", "90s", "--polls", "2", "--source", tmp_path / "capture", "--baseline", baseline_dir,
                  "--window", "50", "--no-embeddings", "--json")
    assert len(waits) == 1 and 80 < waits[0] <= 90  # the interval less the poll's own time
    assert watched.exit_code == 0, watched.output
    polls = [json.loads(line) for line in watched.stdout.splitlines()]
    assert [p["records"] for p in polls] == [20, 10] and polls[-1]["pending"] == 30


def test_the_sentence_cache_encodes_each_text_once_and_survives_filling_up(monkeypatch):
    import numpy as np

    from monitoring import embed

    calls = []

    class Model:
        def encode(self, texts, **kwargs):
            calls.append(list(texts))
            return np.stack([np.full(embed.DIM, len(t), np.float32) for t in texts])

    embedder = embed.Embedder(Model())
    first = embedder.encode_cached(["a", "bb", "a"])
    assert calls == [["a", "bb"]] and first[2][0] == 1 and first[1][0] == 2
    monkeypatch.setattr(embed, "CACHE_SIZE", 3)
    again = embedder.encode_cached(["a", "ccc", "dddd"])  # over the cap: cleared, this batch encoded whole
    assert calls[-1] == ["a", "ccc", "dddd"] and [v[0] for v in again] == [1, 3, 4]


def test_the_cursor_stays_bounded_a_day_behind_the_newest_hour(baseline_dir, tmp_path, monkeypatch):
    """Keys of hours more than a day before the newest one read leave the cursor, and are not read again."""
    monkeypatch.setenv("LAUNCHER_HOME", str(tmp_path / "home"))

    def put(hour: str, name: str) -> None:
        path = tmp_path / "capture" / "claims/AllTraffic" / hour / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(chat_record(1)) + "\n")

    def poll() -> dict:
        return json.loads(cli("monitor", "poll", "--source", tmp_path / "capture", "--baseline", baseline_dir, "--state",
                              tmp_path / "state.json", "--no-embeddings", "--json").stdout)

    put("2026/11/29/10", "old")
    assert poll()["records"] == 1
    put("2026/12/01/09", "new")
    assert poll()["records"] == 1
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["horizon"] == "2026/11/30/09" and list(state["done"]) == ["claims/AllTraffic/2026/12/01/09/new.jsonl"]
    assert poll()["records"] == 0  # the old object is behind the horizon: not read twice
    assert state["totals"]["records"] == 2


def test_without_a_sink_the_profiles_alerts_topic_gets_the_alerts(moto_server, baseline_dir, tmp_path, monkeypatch):
    """`launcher config from-terraform` writes the alerts topic into the profile: a monitor needs no ARN typed."""
    import boto3
    from test_monitor_sinks import received, sqs_subscriber

    monkeypatch.setenv("LAUNCHER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LAUNCHER_PROFILE", raising=False)
    topic = boto3.client("sns").create_topic(Name="launcher-alerts")["TopicArn"]
    queue = sqs_subscriber(topic)
    (tmp_path / "home/profiles").mkdir(parents=True)
    (tmp_path / "home/profiles/default.yaml").write_text(f"sagemaker:\n  region: us-east-1\n  alerts_topic: {topic}\n")
    traffic(tmp_path / "capture")
    polled = cli("monitor", "poll", "--source", tmp_path / "capture", "--baseline", baseline_dir, "--window", "100",
                 "--no-embeddings", "--json")
    assert polled.exit_code == 0, polled.output
    sent = {a["id"] for a in json.loads(polled.stdout)["alerts"]}
    delivered = {json.loads(json.loads(m["Body"])["Message"])["id"] for m in received(queue) + received(queue)}
    assert sent and delivered == sent
