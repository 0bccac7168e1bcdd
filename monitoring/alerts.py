"""The alert contract: what a monitor measured (``Signal``), what users receive (``Alert``), and the
book that decides which transitions to send (``AlertBook``). Stdlib only.

One JSON schema for every sink (``ALERT_SCHEMA``, ``Alert.to_json``): SNS, Pub/Sub and the webhook send
that object as their body, the log writes it as one line, CloudWatch counts it. An alert is a transition
of one (endpoint, kind, metric): ``firing`` when a window breaches, ``resolved`` when the metric is back.

Decisions:

* **Deterministic ids.** ``id`` is the first 20 hex characters of SHA-256 over (endpoint, kind, metric,
  window id, state): the same decision sent again carries the same id, so receivers dedupe on it (SNS
  FIFO's MessageDeduplicationId, the webhook's ``X-Launcher-Alert-Id`` header, Pub/Sub's ``alert_id``
  attribute). ``created_at`` is not part of it.
* **De-duplication.** No second ``firing`` while a key fires: one alert per incident, however many
  windows breach.
* **Cooldown** (``cooldown_s``, default an hour). After a resolve, a breach of the same key within the
  cooldown is suppressed (counted in ``suppressed``, not sent), so a metric that flaps across its
  threshold does not page every window. A breach that lasts past the cooldown fires.
* **Hysteresis.** A firing key resolves only after ``resolve_after`` consecutive windows that are not
  breached (default 2). For the kinds whose value is a rate or a level where higher is worse
  (``hallucination`` and ``operational``: hallucination_rate, error_rate, latency_p99_ms), a window
  counts towards resolving only when its value is below ``threshold * resolve_ratio`` (default 0.8); one
  in the band between resets the count. Drift signals carry the drift test's own decision (a p-value
  after correction, a distance or an AUC), so for them ``breached`` alone decides.
* **Exactly once: the outbox.** ``evaluate`` puts each transition in ``outbox`` and changes the state in
  the same step; ``to_dict`` holds both. The poller persists the state (with the outbox, atomically with
  its cursor) *before* sending, sends what is in the outbox, calls ``mark_sent`` for each alert every
  sink accepted, and persists again (``monitoring.sinks.deliver`` does exactly this). Killed before the
  first persist: the window is read again, the same alerts are decided again, nothing was sent.
  Killed after it: the outbox is sent on restart. The one case no protocol avoids: killed after a sink
  accepted an alert but before ``mark_sent`` was persisted, the alert goes out again, with the same
  id. SNS FIFO topics drop it (MessageDeduplicationId = id, five-minute window), webhook receivers
  should drop a repeated ``X-Launcher-Alert-Id``, Pub/Sub subscribers a repeated ``alert_id``
  attribute. Per-sink acceptance is kept too (``mark_sent(id, sink=uri)``), so one failing sink does
  not make the others send twice.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = "launcher.alert/v1"
KINDS = ("drift", "hallucination", "operational")
SEVERITIES = ("info", "warning", "critical")
STATES = ("firing", "resolved")
HYSTERESIS_KINDS = frozenset({"hallucination", "operational"})  # value and threshold in one unit, higher is worse
MAX_EXAMPLES = 3
MAX_EXAMPLE_CHARS = 2000  # per prompt or response: keeps an alert well under SNS's 256 KB message limit
ID_CHARS = 20

# The one schema every sink's payload follows (JSON Schema 2020-12). Receivers should ignore fields they
# do not know: a later version may add some, and changes what is here only with a new "schema" value.
ALERT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://launcher.dev/schemas/alert-v1.json",
    "title": "launcher alert",
    "type": "object",
    "required": ["schema", "id", "endpoint", "kind", "metric", "value", "threshold", "window", "severity",
                 "state", "examples", "report", "created_at"],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": SCHEMA_VERSION},
        "id": {"type": "string", "pattern": f"^[0-9a-f]{{{ID_CHARS}}}$",
               "description": "sha256(endpoint, kind, metric, window id, state), first 20 hex: the dedupe key"},
        "endpoint": {"type": "string", "minLength": 1},
        "kind": {"enum": list(KINDS)},
        "metric": {"type": "string", "minLength": 1,
                   "description": "e.g. output.response_length, input.embedding, hallucination_rate, error_rate"},
        "value": {"type": "number", "description": "the window's value of the metric"},
        "threshold": {"type": "number", "description": "the value the monitor compares it with"},
        "window": {
            "type": "object",
            "required": ["id", "start", "end", "records"],
            "properties": {
                "id": {"type": "string", "minLength": 1},
                "start": {"type": "string", "description": "ISO 8601, UTC"},
                "end": {"type": "string", "description": "ISO 8601, UTC"},
                "records": {"type": "integer", "minimum": 0},
            },
        },
        "severity": {"enum": list(SEVERITIES)},
        "state": {"enum": list(STATES)},
        "examples": {
            "type": "array",
            "maxItems": MAX_EXAMPLES,
            "items": {
                "type": "object",
                "required": ["eventId", "prompt", "response", "unsupported"],
                "properties": {
                    "eventId": {"type": "string"},
                    "prompt": {"type": "string", "maxLength": MAX_EXAMPLE_CHARS + 1},
                    "response": {"type": "string", "maxLength": MAX_EXAMPLE_CHARS + 1},
                    "unsupported": {"type": "array", "items": {"type": ["string", "object"]}},
                },
            },
        },
        "report": {"type": "string", "description": "where the window's HTML report is (path or URI); may be empty"},
        "created_at": {"type": "string", "format": "date-time", "description": "when the book decided it, UTC"},
    },
}


def alert_id(endpoint: str, kind: str, metric: str, window_id: str, state: str) -> str:
    """The deterministic id of one decision (see the module docstring)."""
    key = json.dumps([endpoint, kind, metric, window_id, state], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(key.encode()).hexdigest()[:ID_CHARS]


def _example(record: dict) -> dict:
    def cut(text: Any) -> str:
        text = "" if text is None else str(text)
        return text if len(text) <= MAX_EXAMPLE_CHARS else text[:MAX_EXAMPLE_CHARS] + "…"

    return {"eventId": str(record.get("eventId", "")), "prompt": cut(record.get("prompt")),
            "response": cut(record.get("response")), "unsupported": list(record.get("unsupported") or [])}


@dataclass(frozen=True)
class Signal:
    """One window's measurement of one metric on one endpoint, as a monitor hands it to the book."""

    endpoint: str
    kind: str  # drift | hallucination | operational
    metric: str
    value: float
    threshold: float
    breached: bool
    window: dict  # {"id", "start", "end", "records"}
    severity: str = "warning"
    examples: tuple[dict, ...] = ()  # {"eventId", "prompt", "response", "unsupported": [...]}, at most 3 kept
    report: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Signal kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"Signal severity {self.severity!r} is not one of {', '.join(SEVERITIES)}")
        if not self.endpoint or not self.metric or not str(self.window.get("id") or ""):
            raise ValueError("a Signal needs an endpoint, a metric and a window with an id")
        object.__setattr__(self, "examples", tuple(_example(e) for e in list(self.examples)[:MAX_EXAMPLES]))

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.endpoint, self.kind, self.metric)


@dataclass(frozen=True)
class Alert:
    """A transition users receive: ``to_json()`` is the payload of every sink (``ALERT_SCHEMA``)."""

    id: str
    endpoint: str
    kind: str
    metric: str
    value: float
    threshold: float
    window: dict
    severity: str
    state: str  # firing | resolved
    examples: tuple[dict, ...]
    report: str
    created_at: str  # ISO 8601, UTC, seconds

    @classmethod
    def from_signal(cls, signal: Signal, state: str, now: float) -> Alert:
        window = {"id": str(signal.window["id"]), "start": str(signal.window.get("start", "")),
                  "end": str(signal.window.get("end", "")), "records": int(signal.window.get("records", 0))}
        return cls(id=alert_id(signal.endpoint, signal.kind, signal.metric, window["id"], state),
                   endpoint=signal.endpoint, kind=signal.kind, metric=signal.metric, value=_finite(signal.value, signal.metric),
                   threshold=_finite(signal.threshold, signal.metric), window=window, severity=signal.severity,
                   state=state, examples=signal.examples if state == "firing" else (), report=signal.report,
                   created_at=_iso(now))

    def to_json(self) -> dict:
        payload = {"schema": SCHEMA_VERSION}
        payload.update((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))
        payload["examples"] = [dict(e) for e in self.examples]
        payload["window"] = dict(self.window)
        return payload

    @classmethod
    def from_json(cls, data: dict) -> Alert:
        if data.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"not a {SCHEMA_VERSION} alert (schema={data.get('schema')!r})")
        values = {f.name: data[f.name] for f in dataclasses.fields(cls)}
        values["examples"] = tuple(dict(e) for e in values["examples"])
        values["window"] = dict(values["window"])
        return cls(**values)

    def body(self) -> bytes:
        """The payload as the bytes every sink sends (compact JSON, UTF-8, keys in schema order)."""
        return json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _finite(value: float, metric: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"the {metric} signal's value or threshold is {value}: an alert needs a finite number")
    return value


def _iso(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _KeyState:
    firing: bool = False
    fired_id: str = ""  # the firing alert's id while firing
    clear_streak: int = 0  # consecutive windows that count towards resolving
    resolved_at: float | None = None  # when the last incident resolved (the cooldown starts here)
    suppressed: int = 0  # breaches swallowed by the cooldown since the last resolve


@dataclass
class AlertBook:
    """Per (endpoint, kind, metric) state, and the outbox of alerts decided but not yet confirmed sent."""

    cooldown_s: float = 3600.0
    resolve_after: int = 2
    resolve_ratio: float = 0.8
    outbox: list[Alert] = field(default_factory=list)
    _keys: dict[tuple[str, str, str], _KeyState] = field(default_factory=dict, repr=False)
    _sent_to: dict[str, list[str]] = field(default_factory=dict, repr=False)  # alert id -> sinks that accepted it

    def __post_init__(self):
        if self.resolve_after < 1 or self.cooldown_s < 0 or not 0 < self.resolve_ratio <= 1:
            raise ValueError("AlertBook needs resolve_after >= 1, cooldown_s >= 0 and 0 < resolve_ratio <= 1")

    def evaluate(self, signals: Iterable[Signal], now: float) -> list[Alert]:
        """Apply one or more windows' signals, in order; returns the transitions to send (also appended
        to ``outbox``) and updates the state."""
        alerts = []
        for signal in signals:
            state = self._keys.setdefault(signal.key, _KeyState())
            if signal.breached:
                state.clear_streak = 0
                if state.firing:
                    continue  # one alert per incident
                if state.resolved_at is not None and now - state.resolved_at < self.cooldown_s:
                    state.suppressed += 1
                    continue
                alert = Alert.from_signal(signal, "firing", now)
                state.firing, state.fired_id, state.suppressed = True, alert.id, 0
                alerts.append(alert)
            elif state.firing:
                clear = signal.kind not in HYSTERESIS_KINDS or signal.value < signal.threshold * self.resolve_ratio
                state.clear_streak = state.clear_streak + 1 if clear else 0
                if state.clear_streak >= self.resolve_after:
                    alerts.append(Alert.from_signal(signal, "resolved", now))
                    state.firing, state.fired_id, state.clear_streak, state.resolved_at = False, "", 0, now
        self.outbox.extend(alerts)
        return alerts

    def firing(self) -> list[tuple[str, str, str]]:
        """The (endpoint, kind, metric) keys firing now."""
        return [key for key, state in self._keys.items() if state.firing]

    def suppressed(self, endpoint: str, kind: str, metric: str) -> int:
        """How many breaches of this key the cooldown swallowed since its last resolve."""
        state = self._keys.get((endpoint, kind, metric))
        return state.suppressed if state else 0

    def mark_sent(self, alert_id: str, sink: str | None = None) -> None:
        """``sink`` (its URI) accepted the alert; without ``sink``, every sink did: it leaves the outbox.
        An id not in the outbox is a KeyError (a caller bug: it would otherwise go out again)."""
        if not any(alert.id == alert_id for alert in self.outbox):
            raise KeyError(f"alert {alert_id} is not in the outbox")
        if sink is not None:
            accepted = self._sent_to.setdefault(alert_id, [])
            if sink not in accepted:
                accepted.append(sink)
            return
        self.outbox = [alert for alert in self.outbox if alert.id != alert_id]
        self._sent_to.pop(alert_id, None)

    def sent_to(self, alert_id: str) -> frozenset[str]:
        """The sinks that already accepted an alert still in the outbox."""
        return frozenset(self._sent_to.get(alert_id, ()))

    def to_dict(self) -> dict:
        """JSON-serialisable state: keys, outbox and per-sink acceptance (not the settings)."""
        return {
            "version": 1,
            "keys": [{"endpoint": e, "kind": k, "metric": m, **dataclasses.asdict(s)} for (e, k, m), s in self._keys.items()],
            "outbox": [alert.to_json() for alert in self.outbox],
            "sent_to": {alert_id: list(sinks) for alert_id, sinks in self._sent_to.items()},
        }

    @classmethod
    def from_dict(cls, data: dict | None, *, cooldown_s: float = 3600.0, resolve_after: int = 2,
                  resolve_ratio: float = 0.8) -> AlertBook:
        """The book ``to_dict`` saved (None or {}: a new one), with these settings."""
        book = cls(cooldown_s=cooldown_s, resolve_after=resolve_after, resolve_ratio=resolve_ratio)
        data = data or {}
        if data and data.get("version") != 1:
            raise ValueError(f"alert state version {data.get('version')!r} is not 1")
        names = {f.name for f in dataclasses.fields(_KeyState)}
        for entry in data.get("keys", []):
            book._keys[(entry["endpoint"], entry["kind"], entry["metric"])] = _KeyState(**{n: entry[n] for n in names})
        book.outbox = [Alert.from_json(a) for a in data.get("outbox", [])]
        book._sent_to = {alert_id: list(sinks) for alert_id, sinks in data.get("sent_to", {}).items()}
        return book
