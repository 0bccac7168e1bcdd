"""Alert sinks (monitoring/sinks.py) against real client libraries and local servers: SNS with an SQS
subscriber and CloudWatch on moto, Pub/Sub through tests/fakes/pubsub.py, a webhook receiver on
127.0.0.1 that checks the signature, the log; bad sink URIs; delivery that survives a failing sink."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import logging
import threading
import time

import jsonschema
import pytest
from conftest import free_port

from launcher.errors import BackendError, NotFoundError, UserInputError
from monitoring import sinks
from monitoring.alerts import ALERT_SCHEMA, Alert, AlertBook, Signal

SECRET = "s3cret-for-tests"
WINDOW = {"id": "w0042", "start": "2026-12-01T10:00:00Z", "end": "2026-12-01T10:59:59Z", "records": 200}


def make_alert(kind: str = "hallucination", metric: str = "hallucination_rate", endpoint: str = "claims-summary",
               state: str = "firing", value: float = 0.31) -> Alert:
    example = {"eventId": "ev-1", "prompt": "Weekly wage $900.", "response": "Benefit: $7,000 a week.", "unsupported": ["$7,000"]}
    signal = Signal(endpoint, kind, metric, value, 0.1, True, WINDOW, severity="critical", examples=(example,),
                    report="reports/w0042.html")
    return Alert.from_signal(signal, state, now=time.time())


# --- SNS and CloudWatch on moto --------------------------------------------------------------------
def sqs_subscriber(topic_arn: str, fifo: bool = False) -> str:
    import boto3

    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    queue = sqs.create_queue(QueueName="alerts.fifo" if fifo else "alerts", Attributes={"FifoQueue": "true"} if fifo else {})["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    return queue


def received(queue: str) -> list[dict]:
    import boto3

    messages = boto3.client("sqs").receive_message(QueueUrl=queue, MaxNumberOfMessages=10, AttributeNames=["All"])
    return messages.get("Messages", [])


def test_sns_publishes_the_alert_json_with_its_attributes_to_an_sqs_subscriber(moto_server):
    import boto3

    topic = boto3.client("sns").create_topic(Name="launcher-alerts")["TopicArn"]
    queue = sqs_subscriber(topic)
    [sink] = sinks.parse_sinks([f"sns://{topic}"])
    alert = make_alert(endpoint="claims-summary-ünicode")
    sink.send(alert)

    [message] = received(queue)
    envelope = json.loads(message["Body"])  # SNS's notification, as an SQS subscriber receives it
    assert json.loads(envelope["Message"]) == alert.to_json()
    jsonschema.validate(json.loads(envelope["Message"]), ALERT_SCHEMA)
    assert envelope["Subject"] == "[launcher] firing: hallucination hallucination_rate on claims-summary-?nicode (critical)"
    attributes = {name: value["Value"] for name, value in envelope["MessageAttributes"].items()}
    assert attributes == {"alert_id": alert.id, "kind": "hallucination", "severity": "critical",
                          "endpoint": "claims-summary-ünicode", "state": "firing"}

    sink.send(make_alert(endpoint="a-very-long-endpoint-name-" * 6))
    [message] = received(queue)
    subject = json.loads(message["Body"])["Subject"]
    assert len(subject) == 100 and subject.endswith("...") and subject.isascii(), "SNS takes up to 100 ASCII characters"


def test_an_sns_fifo_topic_drops_a_resent_alert_by_its_id(moto_server):
    import boto3

    topic = boto3.client("sns").create_topic(Name="launcher-alerts.fifo", Attributes={"FifoTopic": "true"})["TopicArn"]
    queue = sqs_subscriber(topic, fifo=True)
    [sink] = sinks.parse_sinks([f"sns://{topic}"])
    alert = make_alert()
    sink.send(alert)
    sink.send(alert)  # a poller killed before mark_sent sends it again on restart
    sink.send(make_alert(metric="error_rate", kind="operational"))

    messages = received(queue)
    assert [m["Attributes"]["MessageDeduplicationId"] for m in messages] == [alert.id, make_alert(metric="error_rate", kind="operational").id]
    assert {m["Attributes"]["MessageGroupId"] for m in messages} == {"claims-summary"}


def test_sns_to_a_missing_topic_is_one_clear_error(moto_server):
    [sink] = sinks.parse_sinks(["sns://arn:aws:sns:us-east-1:123456789012:nope"])
    with pytest.raises(NotFoundError, match=r"^SNS topic arn:aws:sns:us-east-1:123456789012:nope does not exist .*"
                                            r"To fix: create the topic, or correct the sns:// URI"):
        sink.send(make_alert())


def test_cloudwatch_gets_every_window_value_and_an_alerts_count(moto_server):
    import boto3

    [sink] = sinks.parse_sinks(["cloudwatch://Launcher/Monitor"])
    sink.metrics("claims-summary", WINDOW, {"hallucination_rate": 0.31, "output.response_length.psi": 0.42,
                                            "latency_p99_ms": float("nan")})
    sink.send(make_alert())
    sink.send(make_alert(state="resolved"))  # resolves are not counted: an alarm on Alerts pages on new incidents

    cloudwatch = boto3.client("cloudwatch")
    metrics = {(m["MetricName"], tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"])))
               for m in cloudwatch.list_metrics(Namespace="Launcher/Monitor")["Metrics"]}
    assert metrics == {
        ("hallucination_rate", (("Endpoint", "claims-summary"),)),
        ("output.response_length.psi", (("Endpoint", "claims-summary"),)),
        ("Alerts", (("Endpoint", "claims-summary"), ("Kind", "hallucination"), ("Metric", "hallucination_rate"))),
    }, "NaN is skipped (CloudWatch refuses it)"

    def stat(name: str, dimensions: list[dict], start, end) -> list[dict]:
        return cloudwatch.get_metric_statistics(Namespace="Launcher/Monitor", MetricName=name, Dimensions=dimensions,
                                                StartTime=start, EndTime=end, Period=3600, Statistics=["Sum", "Maximum"])["Datapoints"]

    import datetime as dt

    [point] = stat("hallucination_rate", [{"Name": "Endpoint", "Value": "claims-summary"}],
                   dt.datetime(2026, 12, 1, 10, tzinfo=dt.timezone.utc), dt.datetime(2026, 12, 1, 12, tzinfo=dt.timezone.utc))
    assert point["Maximum"] == pytest.approx(0.31)
    now = dt.datetime.now(dt.timezone.utc)
    [count] = stat("Alerts", [{"Name": "Endpoint", "Value": "claims-summary"}, {"Name": "Kind", "Value": "hallucination"},
                              {"Name": "Metric", "Value": "hallucination_rate"}], now - dt.timedelta(hours=1), now + dt.timedelta(hours=1))
    assert count["Sum"] == 1.0


# --- Pub/Sub through the fake, with the real clients ---------------------------------------------
def test_pubsub_publishes_the_alert_json_with_its_attributes(pubsub_fake):
    from google.cloud import pubsub_v1

    topic, subscription = "projects/acme/topics/launcher-alerts", "projects/acme/subscriptions/oncall"
    pubsub_v1.PublisherClient().create_topic(name=topic)
    subscriber = pubsub_v1.SubscriberClient()
    subscriber.create_subscription(name=subscription, topic=topic)
    [sink] = sinks.parse_sinks([f"pubsub://{topic}"])
    alert = make_alert(kind="drift", metric="input.embedding")
    sink.send(alert)

    [message] = subscriber.pull(subscription=subscription, max_messages=10).received_messages
    assert json.loads(message.message.data) == alert.to_json()
    assert dict(message.message.attributes) == {"alert_id": alert.id, "kind": "drift", "severity": "critical",
                                                "endpoint": "claims-summary", "state": "firing"}
    subscriber.acknowledge(subscription=subscription, ack_ids=[message.ack_id])
    assert subscriber.pull(subscription=subscription, max_messages=10).received_messages == []


def test_pubsub_refusals_are_one_clear_error(pubsub_fake):
    [sink] = sinks.parse_sinks(["pubsub://projects/acme/topics/missing"])
    with pytest.raises(NotFoundError, match=r"^Pub/Sub topic projects/acme/topics/missing does not exist \(404 Resource not found"):
        sink.send(make_alert())
    from google.cloud import pubsub_v1

    pubsub_v1.PublisherClient().create_topic(name="projects/acme/topics/missing")
    pubsub_fake.deny("pubsub.topics.publish")
    with pytest.raises(BackendError, match=r"denied access to Pub/Sub topic projects/acme/topics/missing .*grant pubsub.topics.publish"):
        sink.send(make_alert())


# --- the webhook ---------------------------------------------------------------------------------
class Receiver:
    """A webhook receiver on 127.0.0.1 that verifies each request as the README says a receiver should,
    then answers the next scripted status (200 once the script runs out)."""

    def __init__(self, secret: str, answers: list[int] = ()):
        self.secret, self.answers, self.requests = secret.encode(), list(answers), []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                timestamp, signature = self.headers["X-Launcher-Timestamp"], self.headers["X-Launcher-Signature"]
                expected = "sha256=" + hmac.new(receiver.secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
                verified = hmac.compare_digest(expected, signature) and abs(time.time() - int(timestamp)) <= 300
                receiver.requests.append({"headers": dict(self.headers), "body": body, "verified": verified})
                status = (receiver.answers.pop(0) if receiver.answers else 200) if verified else 401
                text = b"bad signature" if status == 401 else b"missing field 'team'" if status == 400 else b"ok"
                self.send_response(status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/launcher?team=ml"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(monkeypatch):
    monkeypatch.setenv("LAUNCHER_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("LAUNCHER_WEBHOOK_BACKOFF_S", "0.01")
    receivers = []

    def start(answers: list[int] = (), secret: str = SECRET) -> Receiver:
        receivers.append(Receiver(secret, answers))
        return receivers[-1]

    yield start
    for r in receivers:
        r.close()


def test_the_webhook_posts_a_signed_alert_that_the_receiver_verifies(receiver):
    hook = receiver()
    [sink] = sinks.parse_sinks([hook.url])
    alert = make_alert()
    sink.send(alert)

    [request] = hook.requests
    assert request["verified"]
    assert json.loads(request["body"]) == alert.to_json()
    headers = request["headers"]
    assert headers["Content-Type"] == "application/json" and headers["X-Launcher-Alert-Id"] == alert.id
    assert abs(int(headers["X-Launcher-Timestamp"]) - time.time()) < 60

    timestamp, signature, body = headers["X-Launcher-Timestamp"], headers["X-Launcher-Signature"], request["body"]
    assert sinks.verify_signature(SECRET.encode(), timestamp, body, signature)
    tampered = body.replace(b'"value":0.31', b'"value":0.01')
    assert tampered != body and not sinks.verify_signature(SECRET.encode(), timestamp, tampered, signature)
    assert not sinks.verify_signature(b"another secret", timestamp, body, signature)
    assert not sinks.verify_signature(SECRET.encode(), str(int(timestamp) - 1), body, signature)
    assert not sinks.verify_signature(SECRET.encode(), timestamp, body, signature, now=int(timestamp) + 301), "a replay later fails"


def test_a_receiver_with_another_secret_refuses_and_the_error_says_so(receiver):
    hook = receiver(secret="the receiver's secret")
    [sink] = sinks.parse_sinks([hook.url])
    with pytest.raises(BackendError, match=r"^webhook http://127.0.0.1:\d+/hooks/launcher refused the alert \w+ "
                                           r"\(HTTP 401 Unauthorized: bad signature\)\. To fix: .*same secret as \$LAUNCHER_WEBHOOK_SECRET$"):
        sink.send(make_alert())
    assert [r["verified"] for r in hook.requests] == [False]


def test_the_webhook_retries_a_503_then_succeeds_with_the_same_alert_id(receiver):
    hook = receiver(answers=[503, 429])
    [sink] = sinks.parse_sinks([hook.url])
    alert = make_alert()
    sink.send(alert)
    assert [r["headers"]["X-Launcher-Alert-Id"] for r in hook.requests] == [alert.id] * 3
    assert all(r["verified"] for r in hook.requests)


def test_the_webhook_gives_up_after_three_attempts_and_a_400_is_not_retried(receiver):
    hook = receiver(answers=[503, 503, 503, 503])
    [sink] = sinks.parse_sinks([hook.url])
    with pytest.raises(BackendError, match=r"^webhook http://127.0.0.1:\d+/hooks/launcher failed 3 times "
                                           r"\(last answer HTTP 503 Service Unavailable: ok\)\. To fix: check that the receiver is up"):
        sink.send(make_alert())
    assert len(hook.requests) == 3

    hook = receiver(answers=[400])
    [sink] = sinks.parse_sinks([hook.url])
    with pytest.raises(BackendError, match=r"refused the alert \w+ \(HTTP 400 Bad Request: missing field 'team'\)\. "
                                           r"To fix: correct what the receiver names$") as error:
        sink.send(make_alert())
    assert "\n" not in str(error.value) and len(hook.requests) == 1


def test_an_unreachable_webhook_is_retried_then_one_error(receiver):
    [sink] = sinks.parse_sinks([f"http://127.0.0.1:{free_port()}/hook"])
    with pytest.raises(BackendError, match=r"^webhook http://127.0.0.1:\d+/hook failed 3 times \(last error: .*refused"):
        sink.send(make_alert())


# --- the log ---------------------------------------------------------------------------------------
def test_the_log_sink_writes_one_json_line_per_alert(caplog, capsys, monkeypatch):
    [sink] = sinks.parse_sinks(["log://"])
    alert = make_alert()
    with caplog.at_level(logging.INFO, logger="launcher.monitor"):
        sink.send(alert)
        sink.send(make_alert(state="resolved"))
    assert [(r.name, r.levelname) for r in caplog.records] == [("launcher.monitor", "ERROR"), ("launcher.monitor", "INFO")]
    assert json.loads(caplog.records[0].getMessage()) == alert.to_json()

    monkeypatch.setattr(logging.getLogger("launcher.monitor"), "propagate", False)  # logging not configured
    sink.send(alert)
    [line] = capsys.readouterr().err.splitlines()
    assert json.loads(line) == alert.to_json()


# --- parsing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("uri", "message"), [
    ("slack://alerts", r"has the unknown scheme 'slack'\. To fix: use one of sns://"),
    ("snss://arn:aws:sns:us-east-1:123456789012:t", r"unknown scheme 'snss'\. Did you mean 'sns'\? To fix"),
    ("alerts", r"is not a sink URI\. To fix: use sns://TOPIC_ARN"),
    ("sns://launcher-alerts", r"does not hold an SNS topic ARN\. To fix: sns://arn:aws:sns:REGION:ACCOUNT_ID:TOPIC"),
    ("sns://arn:aws:sqs:us-east-1:123456789012:queue", r"does not hold an SNS topic ARN"),
    ("pubsub://launcher-alerts", r"does not name a Pub/Sub topic\. To fix: pubsub://projects/PROJECT_ID/topics/TOPIC"),
    ("pubsub://projects/acme/subscriptions/oncall", r"does not name a Pub/Sub topic"),
    ("cloudwatch://", r"does not name a CloudWatch namespace\. To fix: cloudwatch://NAMESPACE"),
    ("cloudwatch://AWS/SageMaker", r"uses a namespace reserved for AWS services"),
    ("log://file.txt", r"has something after log://, which takes nothing\. To fix: --sink log://"),
    ("http://hooks.example.com/x", r"is plain http to hooks.example.com.*To fix: use https://"),
    ("https://user:pw@hooks.example.com/x", r"carries credentials in the URL"),
    ("https:///x", r"has no host"),
    ("https://hooks.example.com:port/x", r"has a port that is not a number"),
])
def test_a_bad_sink_uri_is_one_line_saying_what_where_and_how_to_fix(uri, message, monkeypatch):
    monkeypatch.setenv("LAUNCHER_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(UserInputError, match=rf"^--sink '{uri}' \(sink 2 of 2\) .*{message}") as error:
        sinks.parse_sinks(["log://", uri])
    assert "\n" not in str(error.value) and "To fix: " in str(error.value)
    assert error.value.exit_code == 2


def test_a_webhook_without_a_secret_and_a_repeated_sink_are_refused(monkeypatch):
    monkeypatch.delenv("LAUNCHER_WEBHOOK_SECRET", raising=False)
    with pytest.raises(UserInputError, match=r"^--sink 'https://hooks.example.com/x' is a webhook, and webhooks are signed, "
                                             r"but \$LAUNCHER_WEBHOOK_SECRET is not set\. To fix: export LAUNCHER_WEBHOOK_SECRET="):
        sinks.parse_sinks(["https://hooks.example.com/x"])
    with pytest.raises(UserInputError, match=r"'log://' \(sink 2 of 2\) is given twice"):
        sinks.parse_sinks(["log://", "log://"])
    monkeypatch.setenv("LAUNCHER_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    parsed = sinks.parse_sinks(["sns://arn:aws:sns:us-west-2:123456789012:a.fifo", "pubsub://projects/acme/topics/alerts",
                                "https://hooks.example.com/x", "http://localhost:8080/x", "cloudwatch://Launcher/Monitor", "log://"])
    assert [type(s).__name__ for s in parsed] == ["SnsSink", "PubSubSink", "WebhookSink", "WebhookSink", "CloudWatchSink", "LogSink"]
    assert (parsed[0].region, parsed[4].region) == ("us-west-2", "eu-west-1")
    assert all(isinstance(s, sinks.Sink) for s in parsed)


# --- delivery, exactly once ----------------------------------------------------------------------
def test_delivery_survives_a_failing_sink_without_sending_twice(receiver, caplog):
    hook = receiver(answers=[500, 500, 500])  # down for the first poll, back for the second
    delivered_to = sinks.parse_sinks(["log://", hook.url])
    book = AlertBook()
    [alert] = book.evaluate([Signal("claims", "operational", "error_rate", 0.2, 0.05, True, WINDOW)], now=time.time())
    saved = []

    def persist():  # the poller's save, with what the sinks had received by then
        saved.append((len(caplog.records) + len(hook.requests), json.dumps(book.to_dict())))

    with caplog.at_level(logging.INFO, logger="launcher.monitor"):
        with pytest.raises(BackendError, match=r"^1 alert deliveries failed and stay in the outbox for the next poll \(http://"):
            sinks.deliver(book, delivered_to, persist)
        assert saved[0][0] == 0 and json.loads(saved[0][1])["outbox"][0]["id"] == alert.id, "persisted before anything was sent"
        # the poller restarts from what it saved
        book = AlertBook.from_dict(json.loads(saved[-1][1]))
        assert book.outbox == [alert] and book.sent_to(alert.id) == {"log://"}
        assert sinks.deliver(book, delivered_to, persist) == [alert]
    assert len(caplog.records) == 1, "the log sink had it already: not sent again"
    assert [r["verified"] for r in hook.requests] == [True] * 4
    assert json.loads(saved[-1][1])["outbox"] == [] and book.outbox == []
