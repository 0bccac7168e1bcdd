"""Where alerts go: one ``Sink`` per channel users already watch, named by a URI.

    sns://arn:aws:sns:REGION:ACCOUNT:TOPIC     SNS publish (a .fifo topic dedupes on the alert id)
    pubsub://projects/P/topics/T               Pub/Sub publish
    https://host/path                          a webhook: POST, HMAC-SHA256 signed (http:// only to localhost)
    cloudwatch://NAMESPACE                     CloudWatch metrics: every window's values, and an Alerts count
    log://                                     one JSON line per alert on the ``launcher.monitor`` logger

``parse_sinks`` checks every URI (and the webhook secret) before anything is sent: a bad one is one
``UserInputError`` line saying what, where and how to fix it. Every sink sends ``Alert.body()``, the
``monitoring.alerts.ALERT_SCHEMA`` object, and carries the alert id where its receivers can dedupe on
it (see ``monitoring.alerts`` for why a resend can happen): SNS ``MessageDeduplicationId`` (FIFO) and
message attribute ``alert_id``, Pub/Sub attribute ``alert_id``, webhook header ``X-Launcher-Alert-Id``.

The webhook signs each request (Stripe's and GitHub's scheme): headers ``X-Launcher-Timestamp`` (unix
seconds) and ``X-Launcher-Signature: sha256=<hex>``, the hex HMAC-SHA256 under the secret of
``f"{timestamp}.".encode() + body``. The secret is the value of ``LAUNCHER_WEBHOOK_SECRET`` (one secret
for every webhook sink; required, never in the URI). A receiver verifies::

    expected = "sha256=" + hmac.new(secret, f"{timestamp}.".encode() + raw_body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(expected, signature) and abs(time.time() - int(timestamp)) <= 300

over the raw bytes it received, before parsing them (``verify_signature`` does this), and drops a
repeated ``X-Launcher-Alert-Id``. Connection errors, 5xx and 429 are retried with tenacity (3 attempts,
exponential backoff from ``LAUNCHER_WEBHOOK_BACKOFF_S`` seconds, default 1; each attempt is signed
afresh); another 4xx is a ``BackendError`` naming the status at once. The webhook uses the standard
library's urllib: httpx is not a dependency of the project.

Errors are translated once, here, with ``launcher.clouds.aws_errors`` / ``google_errors``: nothing above
a sink sees a botocore or google-api-core exception. boto3, google-cloud-pubsub and tenacity are imported
inside the sinks that use them (through ``launcher.clouds``), so importing this module is cheap.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import math
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from launcher import clouds
from launcher.errors import BackendError, LauncherError, UserInputError, did_you_mean, reason
from monitoring.alerts import Alert, AlertBook

SCHEMES = ("sns", "pubsub", "https", "http", "cloudwatch", "log")
WEBHOOK_SECRET_ENV = "LAUNCHER_WEBHOOK_SECRET"
WEBHOOK_BACKOFF_ENV = "LAUNCHER_WEBHOOK_BACKOFF_S"
WEBHOOK_ATTEMPTS = 3
WEBHOOK_TIMEOUT_S = 10.0
SIGNATURE_TOLERANCE_S = 300
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
SNS_ARN = re.compile(r"arn:aws(?:-[a-z]+)*:sns:([a-z]{2}(?:-[a-z]+)+-\d):(\d{12}):([A-Za-z0-9_-]{1,256}(?:\.fifo)?)")
PUBSUB_TOPIC = re.compile(r"projects/[^/\s]+/topics/(?!goog)[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")
CLOUDWATCH_NAMESPACE = re.compile(r"[A-Za-z0-9.\-_/#:]{1,255}")
CLOUDWATCH_BATCH = 1000  # PutMetricData takes up to 1,000 metrics a call
SUBJECT_CHARS = 100  # SNS's limit for email subjects: ASCII, no line breaks
LOGGER = "launcher.monitor"


@runtime_checkable
class Sink(Protocol):
    """A place alerts go. ``send`` delivers one alert (raises a LauncherError when it could not);
    ``metrics`` publishes a window's values (a no-op except for CloudWatch)."""

    uri: str

    def send(self, alert: Alert) -> None: ...

    def metrics(self, endpoint: str, window: dict, values: dict[str, float]) -> None: ...


# --- parsing ----------------------------------------------------------------------------------------
def parse_sinks(uris: list[str]) -> list[Sink]:
    """The sinks the URIs name, all checked before any is used; a bad one is a UserInputError."""
    sinks: list[Sink] = []
    for number, uri in enumerate(uris, 1):
        where = f"--sink {uri!r}" if len(uris) == 1 else f"--sink {uri!r} (sink {number} of {len(uris)})"
        if any(sink.uri == uri for sink in sinks):
            raise UserInputError(f"{where} is given twice, so every alert would go to it twice. To fix: give it once")
        sinks.append(_parse(uri.strip(), where))
    return sinks


def _parse(uri: str, where: str) -> Sink:
    scheme, sep, rest = uri.partition("://")
    if not sep:
        raise UserInputError(f"{where} is not a sink URI. To fix: use sns://TOPIC_ARN, pubsub://projects/P/topics/T, "
                             "https://HOST/PATH, cloudwatch://NAMESPACE or log://")
    if scheme not in SCHEMES:
        raise UserInputError(f"{where} has the unknown scheme {scheme!r}.{did_you_mean(scheme, SCHEMES)} "
                             "To fix: use one of sns://, pubsub://, https://, cloudwatch:// or log://")
    if scheme == "sns":
        match = SNS_ARN.fullmatch(rest)
        if match is None:
            raise UserInputError(f"{where} does not hold an SNS topic ARN. "
                                 "To fix: sns://arn:aws:sns:REGION:ACCOUNT_ID:TOPIC ('aws sns list-topics' shows them)")
        return SnsSink(uri, topic_arn=rest, region=match[1])
    if scheme == "pubsub":
        if PUBSUB_TOPIC.fullmatch(rest) is None:
            raise UserInputError(f"{where} does not name a Pub/Sub topic. To fix: pubsub://projects/PROJECT_ID/topics/TOPIC "
                                 "('gcloud pubsub topics list' shows them)")
        return PubSubSink(uri, topic=rest)
    if scheme == "cloudwatch":
        if CLOUDWATCH_NAMESPACE.fullmatch(rest) is None or rest.startswith(":"):
            raise UserInputError(f"{where} does not name a CloudWatch namespace. To fix: cloudwatch://NAMESPACE, "
                                 "1-255 letters, digits or . - _ / # : (e.g. cloudwatch://Launcher/Monitor)")
        if rest.startswith("AWS/"):
            raise UserInputError(f"{where} uses a namespace reserved for AWS services. To fix: pick one not starting "
                                 "with AWS/ (e.g. cloudwatch://Launcher/Monitor)")
        return CloudWatchSink(uri, namespace=rest, region=clouds.aws_region(None, "cloudwatch"))
    if scheme == "log":
        if rest:
            raise UserInputError(f"{where} has something after log://, which takes nothing. To fix: --sink log://")
        return LogSink(uri)
    return _parse_webhook(uri, scheme, where)


def _parse_webhook(uri: str, scheme: str, where: str) -> WebhookSink:
    parts = urllib.parse.urlsplit(uri)
    host = parts.hostname or ""
    if not host:
        raise UserInputError(f"{where} has no host. To fix: https://HOST/PATH")
    if parts.username or parts.password:
        raise UserInputError(f"{where} carries credentials in the URL, which would end up in logs. "
                             f"To fix: drop them; requests are signed with ${WEBHOOK_SECRET_ENV}")
    if scheme == "http" and host not in LOCAL_HOSTS:
        raise UserInputError(f"{where} is plain http to {host}: alerts carry prompts and responses. "
                             "To fix: use https:// (http:// is accepted only for 127.0.0.1 or localhost)")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise UserInputError(f"{where} has a port that is not a number. To fix: https://HOST:PORT/PATH") from None
    secret = os.environ.get(WEBHOOK_SECRET_ENV, "")
    if not secret:
        raise UserInputError(f"{where} is a webhook, and webhooks are signed, but ${WEBHOOK_SECRET_ENV} is not set. "
                             f"To fix: export {WEBHOOK_SECRET_ENV}=<the secret the receiver verifies with>")
    return WebhookSink(uri, secret=secret.encode())


# --- delivery ---------------------------------------------------------------------------------------
def deliver(book: AlertBook, sinks: list[Sink], persist: Callable[[], None]) -> list[Alert]:
    """Send the book's outbox to every sink, exactly once as far as a protocol can (monitoring.alerts).

    ``persist()`` saves the state holding the book (with the poller's cursor). It is called before
    anything is sent, after each sink accepts an alert, and after the alert leaves the outbox. A sink
    that fails leaves the alert in the outbox for the next call, without sending it again to the sinks
    that accepted it; the others still get theirs. Returns the alerts every sink accepted; raises one
    BackendError naming the failures after trying everything."""
    persist()
    delivered, failures = [], []
    for alert in list(book.outbox):
        ok = True
        for sink in sinks:
            if sink.uri in book.sent_to(alert.id):
                continue
            try:
                sink.send(alert)
            except LauncherError as exc:
                ok = False
                failures.append(f"{sink.uri}: {reason(exc)}")
                continue
            book.mark_sent(alert.id, sink.uri)
            persist()
        if ok:
            book.mark_sent(alert.id)
            persist()
            delivered.append(alert)
    if failures:
        raise BackendError(f"{len(failures)} alert deliveries failed and stay in the outbox for the next poll "
                           f"({'; '.join(failures)}). To fix: correct what the first names, then poll again")
    return delivered


def _subject(alert: Alert) -> str:
    text = f"[launcher] {alert.state}: {alert.kind} {alert.metric} on {alert.endpoint} ({alert.severity})"
    text = text.encode("ascii", "replace").decode()
    text = "".join(c if c.isprintable() else " " for c in text)
    return text if len(text) <= SUBJECT_CHARS else text[: SUBJECT_CHARS - 3] + "..."


def _attributes(alert: Alert) -> dict[str, str]:
    return {"alert_id": alert.id, "kind": alert.kind, "severity": alert.severity, "endpoint": alert.endpoint,
            "state": alert.state}


class SnsSink:
    """SNS ``Publish``: the alert JSON as the message, its id, kind, severity, endpoint and state as
    message attributes (subscription filter policies can match them). A ``.fifo`` topic gets
    ``MessageGroupId`` = endpoint and ``MessageDeduplicationId`` = alert id. IAM: sns:Publish."""

    def __init__(self, uri: str, *, topic_arn: str, region: str):
        self.uri, self.topic_arn, self.region = uri, topic_arn, region

    def send(self, alert: Alert) -> None:
        request = {"TopicArn": self.topic_arn, "Subject": _subject(alert), "Message": alert.body().decode(),
                   "MessageAttributes": {k: {"DataType": "String", "StringValue": v} for k, v in _attributes(alert).items()}}
        if self.topic_arn.endswith(".fifo"):
            request.update(MessageGroupId=alert.endpoint[:128], MessageDeduplicationId=alert.id)
        with clouds.aws_errors(f"SNS topic {self.topic_arn}", "sns:Publish",
                               missing="create the topic, or correct the sns:// URI ('aws sns list-topics')"):
            clouds.aws_client("sns", self.region).publish(**request)

    def metrics(self, endpoint: str, window: dict, values: dict[str, float]) -> None:
        return None


class PubSubSink:
    """Pub/Sub ``Publish``: the alert JSON as data, attributes alert_id, kind, severity, endpoint and
    state; waits for the server's message id (30 s). IAM: pubsub.topics.publish."""

    def __init__(self, uri: str, *, topic: str):
        self.uri, self.topic = uri, topic

    def send(self, alert: Alert) -> None:
        import concurrent.futures

        with clouds.google_errors(f"Pub/Sub topic {self.topic}", "pubsub.topics.publish",
                                  missing="create the topic, or correct the pubsub:// URI ('gcloud pubsub topics list')"):
            future = clouds.pubsub_publisher().publish(self.topic, data=alert.body(), **_attributes(alert))
            try:
                future.result(timeout=30)
            except concurrent.futures.TimeoutError:
                raise BackendError(f"Pub/Sub did not confirm the alert to {self.topic} within 30 s. "
                                   "To fix: check the network (and PUBSUB_EMULATOR_HOST if set), then poll again") from None

    def metrics(self, endpoint: str, window: dict, values: dict[str, float]) -> None:
        return None


class WebhookSink:
    """An HTTPS POST of the alert JSON, signed (see the module docstring for the recipe)."""

    def __init__(self, uri: str, *, secret: bytes):
        self.uri, self.secret = uri, secret
        parts = urllib.parse.urlsplit(uri)
        self._shown = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))  # no query in messages

    def send(self, alert: Alert) -> None:
        import tenacity

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Transient), stop=tenacity.stop_after_attempt(WEBHOOK_ATTEMPTS),
            wait=tenacity.wait_exponential(multiplier=float(os.environ.get(WEBHOOK_BACKOFF_ENV, "1")), max=30), reraise=True)
        try:
            retrying(self._post, alert)
        except _Transient as exc:
            raise BackendError(f"webhook {self._shown} failed {WEBHOOK_ATTEMPTS} times ({exc}). "
                               "To fix: check that the receiver is up and reachable, then poll again") from None

    def _post(self, alert: Alert) -> None:
        from launcher import __version__

        body = alert.body()
        timestamp = str(int(time.time()))
        request = urllib.request.Request(self.uri, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": f"launcher/{__version__}",
            "X-Launcher-Alert-Id": alert.id, "X-Launcher-Timestamp": timestamp,
            "X-Launcher-Signature": sign(self.secret, timestamp, body)})
        try:
            urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S).close()
        except urllib.error.HTTPError as exc:
            detail = _first_line(exc.read())
            exc.close()
            status = f"HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")
            if exc.code >= 500 or exc.code == 429:
                raise _Transient(f"last answer {status}") from None
            fix = ("the receiver rejected the signature: give it the same secret as $" + WEBHOOK_SECRET_ENV
                   if exc.code in (401, 403) else "correct what the receiver names")
            raise BackendError(f"webhook {self._shown} refused the alert {alert.id} ({status}). To fix: {fix}") from None
        except (urllib.error.URLError, OSError) as exc:  # refused, reset, DNS, TLS, timeout
            raise _Transient(f"last error: {reason(getattr(exc, 'reason', exc))}") from None

    def metrics(self, endpoint: str, window: dict, values: dict[str, float]) -> None:
        return None


class _Transient(Exception):
    """A webhook failure worth another attempt (connection error, 5xx, 429)."""


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Launcher-Signature`` value of ``body`` sent at ``timestamp`` (unix seconds, as a string)."""
    return "sha256=" + hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, timestamp: str, body: bytes, signature: str, *,
                     tolerance_s: float = SIGNATURE_TOLERANCE_S, now: float | None = None) -> bool:
    """A receiver's check: the signature matches the raw body and the timestamp is recent (replays of an
    old request fail)."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


def _first_line(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").strip()
    return text.splitlines()[0][:200] if text else ""


class CloudWatchSink:
    """CloudWatch ``PutMetricData`` in the namespace: each window's values (dimension ``Endpoint``, at the
    window's end) and, for each firing alert, ``Alerts`` = 1 (Count; dimensions Endpoint, Kind, Metric),
    so a CloudWatch alarm on Sum(Alerts) >= 1 pages on a new incident (resolves are not counted). IAM:
    cloudwatch:PutMetricData. The region is the environment's (AWS_REGION, the profile)."""

    def __init__(self, uri: str, *, namespace: str, region: str | None):
        self.uri, self.namespace, self.region = uri, namespace, region

    def send(self, alert: Alert) -> None:
        if alert.state != "firing":
            return
        dimensions = [{"Name": "Endpoint", "Value": alert.endpoint}, {"Name": "Kind", "Value": alert.kind},
                      {"Name": "Metric", "Value": alert.metric}]
        self._put([{"MetricName": "Alerts", "Dimensions": dimensions, "Value": 1.0, "Unit": "Count",
                    "Timestamp": _timestamp(alert.created_at)}])

    def metrics(self, endpoint: str, window: dict, values: dict[str, float]) -> None:
        when = _timestamp(str(window.get("end", "")))
        data = [{"MetricName": name, "Dimensions": [{"Name": "Endpoint", "Value": endpoint}], "Value": float(value),
                 "Unit": "None", "Timestamp": when}
                for name, value in values.items() if math.isfinite(float(value))]  # CloudWatch refuses NaN and inf
        for start in range(0, len(data), CLOUDWATCH_BATCH):
            self._put(data[start:start + CLOUDWATCH_BATCH])

    def _put(self, data: list[dict]) -> None:
        with clouds.aws_errors(f"CloudWatch namespace {self.namespace}", "cloudwatch:PutMetricData"):
            clouds.aws_client("cloudwatch", self.region).put_metric_data(Namespace=self.namespace, MetricData=data)


def _timestamp(text: str) -> dt.datetime:
    """An ISO 8601 time as an aware datetime; now when it is empty or not one."""
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return dt.datetime.now(dt.timezone.utc)
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


class LogSink:
    """One JSON line per alert on the ``launcher.monitor`` logger (WARNING for a firing alert, ERROR for
    a critical one, INFO for a resolve), or on stderr when logging is not configured."""

    def __init__(self, uri: str = "log://"):
        self.uri = uri

    def send(self, alert: Alert) -> None:
        line = alert.body().decode()
        logger = logging.getLogger(LOGGER)
        if not logger.hasHandlers():
            print(line, file=sys.stderr, flush=True)
            return
        level = logging.INFO if alert.state == "resolved" else logging.ERROR if alert.severity == "critical" else logging.WARNING
        logger.log(level, line)

    def metrics(self, endpoint: str, window: dict, values: dict[str, float]) -> None:
        return None


__all__ = ["CloudWatchSink", "LogSink", "PubSubSink", "Sink", "SnsSink", "WebhookSink", "deliver", "parse_sinks",
           "sign", "verify_signature"]
