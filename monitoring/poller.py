"""``launcher monitor poll``: read what is new in a capture source, score each record once, test each
full window against the baseline, and send the alerts that follow, exactly once.

    result = poll(source, baseline, sinks=[...], state_uri=..., window=200)   # a JSON-able dict

One poll, in order:

1. **Deliver what an earlier poll decided** but did not finish sending (the state's outbox).
2. **Read** the capture objects not yet in the cursor (``state["done"]``: every object key read, with
   its version, for the last ``LATE_HOURS`` hours of the layout's ``yyyy/mm/dd/hh`` folders; older
   hours are behind the ``horizon`` and not read again), records in time order; records that cannot be
   read are counted as ``skipped``.
3. **Score** each record: descriptors, grounding (its unsupported spans: ``flagged``), embeddings.
   Scored rows join the pending window.
4. **Test** each full window of ``window`` records (in read order) against the baseline: drift per
   side and metric, the hallucination rate and unsupported-fact share, the error rate and p99 latency
   (from the capture's metadata, or a SageMaker endpoint's CloudWatch metrics: ``monitoring.operational``).
   Each window gets an HTML report, and its results become signals for the alert book (de-duplication,
   cooldown, hysteresis), whose new alerts go into the outbox.
5. **Commit** the state (cursor, pending rows, window history, alert book with its outbox) in one
   conditional write. Then **send** the outbox and commit again as each alert is confirmed.

Killed anywhere before 5's first write, a poll has changed nothing but reports (which the next poll
rewrites identically): the same objects are read again, and scored once in the committed history. Killed
after it, the next poll's step 1 sends what is left. The one case no poller can close alone: a sink
accepted an alert and the process died before the confirmation was written; that alert is sent again
with the **same id** (``X-Launcher-Alert-Id``, SNS's ``MessageDeduplicationId`` on FIFO topics, the
Pub/Sub ``alert_id`` attribute), which receivers dedupe on.

Windows do not depend on when polls run: a window is the next ``window`` records in read order, however
many polls they took to arrive. ``flush=True`` also tests a last partial window of at least
``min_window`` records (the demo, or the end of a batch).
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import io
import re
from pathlib import Path
from typing import Any

from monitoring import descriptors as d
from monitoring import state as store
from monitoring.records import Exchange, list_objects, read_object

STATE_VERSION = 1
HISTORY = 200  # windows kept in the state for the report's drift-over-time plot
DEFAULT_WINDOW = 200
MIN_WINDOW = 20
ERROR_RATE = 0.05
LATENCY_FACTOR = 2.0  # p99 above twice the baseline's
MAX_FLAGGED_SHOWN = 50
LATE_HOURS = 24  # capture that arrives later than this after the newest hour read is not read


def _encode(array: Any) -> str:
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, np.float16), allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _decode(text: str) -> Any:
    import numpy as np

    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False).astype(np.float32)


def _empty_pending() -> dict[str, Any]:
    return {"rows": {name: [] for name in d.NAMES}, "flagged": [], "unsupported": [], "facts": [], "ok": [], "times": [],
            "texts": [], "prompt": None, "response": None, "all_status": [], "all_latency": [], "all_times": []}


def default_state_uri(source: str) -> str:
    """Beside the capture, ``<source>.monitor-state.json``, in a bucket (outside the capture prefix); under
    ``$LAUNCHER_HOME/monitor/`` for a local source."""
    if source.startswith(("s3://", "gs://")):
        return f"{source.rstrip('/')}.monitor-state.json"
    from launcher import index

    return str(index.home() / "monitor" / f"state-{hashlib.sha256(source.encode()).hexdigest()[:12]}.json")


def endpoint_of(source: str, exchanges: list[Exchange]) -> str:
    """The endpoint name: the capture layout's ``<endpoint>/<variant>/yyyy/...`` under the source."""
    for exchange in exchanges:
        parts = exchange.where.split("/")
        if len(parts) > 6:
            return parts[0]
    return Path(source.rstrip("/")).name or "endpoint"


def poll(source: str, baseline: Any, *, sinks: list[Any] = (), state_uri: str | None = None, window: int = DEFAULT_WINDOW,
         embeddings: bool = True, alpha: float = 0.01, flush: bool = False, min_window: int = MIN_WINDOW,
         report_dir: str | Path | None = None, endpoint: str | None = None, now: float | None = None,
         latency_p99_ms: float | None = None, crash_at: str | None = None) -> dict[str, Any]:
    """One poll (see the module docstring). ``crash_at`` (tests only): raise SystemExit at a named point."""
    import time

    from monitoring.alerts import AlertBook

    state_uri = state_uri or default_state_uri(source)
    now = time.time() if now is None else now
    state, token = store.load(state_uri)
    if state and state.get("source") not in (None, source):
        from launcher.errors import UserInputError

        raise UserInputError(f"the state {state_uri} belongs to source {state['source']}, not {source}. To fix: give each "
                             "source its own --state")
    state = state or {"version": STATE_VERSION, "source": source, "done": {}, "pending": _empty_pending(), "windows": [],
                      "alerts": None, "totals": {"records": 0, "skipped": 0, "flagged": 0}}
    book = AlertBook.from_dict(state["alerts"]) if state.get("alerts") else AlertBook()
    sent: list[dict] = []

    token = _deliver(state, book, sinks, state_uri, token, sent, crash_at)  # 1: an earlier poll's outbox first

    horizon = state.get("horizon", "")
    objects = [o for o in list_objects(source) if o.key not in state["done"] and _hour(o.key) >= horizon]  # 2
    exchanges: list[Exchange] = []
    skipped = []
    for obj in objects:
        found, bad = read_object(source, obj)
        exchanges += found
        skipped += bad
    exchanges.sort(key=lambda e: e.inference_time)  # time order across files (stable: file order within a second)
    if crash_at == "after-read":
        raise SystemExit(137)
    endpoint = endpoint or state.get("endpoint") or endpoint_of(source, exchanges)
    state["endpoint"] = endpoint

    flagged = _score_into(state["pending"], exchanges, embeddings)  # 3
    windows = []
    pending = state["pending"]
    while len(pending["ok"]) >= window or (flush and len(pending["ok"]) >= min_window):  # 4
        size = min(window, len(pending["ok"]))
        windows.append(_test_window(state, baseline, _take(pending, size), embeddings, alpha, report_dir, endpoint, latency_p99_ms))
    if crash_at == "after-score":
        raise SystemExit(137)
    signals = [s for w in windows for s in w.pop("_signals")]
    book.evaluate(signals, now)
    for obj in objects:
        state["done"][obj.key] = obj.version
    _move_horizon(state)
    totals = state["totals"]
    totals["records"] += len(exchanges)
    totals["skipped"] += len(skipped)
    totals["flagged"] += len(flagged)
    state["windows"] = (state["windows"] + [_summary(w) for w in windows])[-HISTORY:]
    state["metrics_outbox"] = state.get("metrics_outbox", []) + [_metrics_item(endpoint, w) for w in windows]
    state["alerts"] = book.to_dict()
    token = store.save(state_uri, state, token)  # 5
    if crash_at == "after-commit":
        raise SystemExit(137)
    token = _deliver(state, book, sinks, state_uri, token, sent, crash_at)
    return {"source": source, "state": state_uri, "endpoint": endpoint, "objects": len(objects), "records": len(exchanges),
            "skipped": len(skipped), "skipped_examples": [{"where": s.where, "why": s.why} for s in skipped[:10]],
            "flagged": flagged[:MAX_FLAGGED_SHOWN], "flagged_count": len(flagged),
            "windows": [{k: v for k, v in w.items() if not k.startswith("_")} for w in windows],
            "drift": windows[-1]["drift"] if windows else {}, "pending": len(pending["ok"]), "alerts": sent, "totals": totals}


_HOUR = re.compile(r"(\d{4}/\d\d/\d\d/\d\d)/[^/]+$")


def _hour(key: str) -> str:
    """The ``yyyy/mm/dd/hh`` folder of a capture key ("" for a key outside that layout: always read)."""
    found = _HOUR.search(key)
    return found[1] if found else ""


def _move_horizon(state: dict[str, Any]) -> None:
    """Keep the cursor bounded: the keys of hours more than ``LATE_HOURS`` before the newest hour read are
    dropped from ``done``, and objects in those hours are not read again (nor at all, if one arrives
    that late: SageMaker delivers its capture within minutes, our container within seconds)."""
    hours = sorted({_hour(k) for k in state["done"]} - {""})
    if not hours:
        return
    newest = _dt.datetime.strptime(hours[-1], "%Y/%m/%d/%H")
    horizon = (newest - _dt.timedelta(hours=LATE_HOURS)).strftime("%Y/%m/%d/%H")
    if horizon > state.get("horizon", ""):
        state["horizon"] = horizon
        state["done"] = {k: v for k, v in state["done"].items() if not _hour(k) or _hour(k) >= horizon}


def _score_into(pending: dict[str, Any], exchanges: list[Exchange], embeddings: bool) -> list[dict[str, Any]]:
    """Score the exchanges into the pending window; the flagged ones (eventId, score, spans)."""
    import numpy as np

    from monitoring.window import score_pairs

    good = [e for e in exchanges if e.ok]
    support = None
    if embeddings and good:
        from monitoring.embed import Embedder

        vectors = Embedder.load().pairs([e.prompt for e in good], [e.response for e in good])
        support = vectors.support
        for side, new in (("prompt", vectors.prompt), ("response", vectors.response)):
            old = _decode(pending[side]) if pending.get(side) else np.zeros((0, new.shape[1]), np.float32)
            pending[side] = _encode(np.concatenate([old, new]))
    scored = score_pairs([(e.prompt, e.response) for e in good], finish_reasons=[e.finish_reason for e in good], support=support)
    flagged = []
    for exchange, grounding in zip(good, scored.scores, strict=True):
        if grounding.flagged:
            flagged.append({"eventId": exchange.event_id, "inferenceTime": exchange.inference_time, **grounding.to_json()})
    for name in d.NAMES:
        pending["rows"][name] += scored.descriptors[name]
    pending["flagged"] += [g.flagged for g in scored.scores]
    pending["unsupported"] += [len(g.unsupported) for g in scored.scores]
    pending["facts"] += [g.facts for g in scored.scores]
    pending["texts"] += [{"eventId": e.event_id, "prompt": e.prompt[:2000], "response": e.response[:2000],
                          "unsupported": g.unsupported, "derived": g.derived} if g.flagged else None
                         for e, g in zip(good, scored.scores, strict=True)]
    for exchange in exchanges:  # every record, answered or not, for the operational signals
        pending["all_status"].append(exchange.status)
        pending["all_latency"].append(exchange.latency_ms)
        pending["all_times"].append(exchange.inference_time)
    pending["ok"] += [e.event_id for e in good]
    pending["times"] += [e.inference_time for e in good]
    return flagged


def _take(pending: dict[str, Any], size: int) -> dict[str, Any]:
    """The first ``size`` scored records out of the pending window (and the operational rows up to the
    last of them)."""
    taken: dict[str, Any] = {"rows": {name: pending["rows"][name][:size] for name in d.NAMES}}
    for name in d.NAMES:
        pending["rows"][name] = pending["rows"][name][size:]
    for key in ("flagged", "unsupported", "facts", "ok", "times", "texts"):
        taken[key], pending[key] = pending[key][:size], pending[key][size:]
    for side in ("prompt", "response"):
        if pending.get(side):
            vectors = _decode(pending[side])
            taken[side], rest = vectors[:size], vectors[size:]
            pending[side] = _encode(rest) if len(rest) else None
        else:
            taken[side] = None
    last = taken["times"][-1] if taken["times"] else ""
    times = pending["all_times"]
    cut = sum(1 for t in times if t <= last) if len(pending["ok"]) else len(times)
    for key in ("all_status", "all_latency", "all_times"):
        values = pending[key]
        taken[key], pending[key] = values[:cut], values[cut:]
    return taken


def _window_id(endpoint: str, taken: dict[str, Any]) -> str:
    return hashlib.sha256(f"{endpoint}|{taken['ok'][0]}|{taken['ok'][-1]}|{len(taken['ok'])}".encode()).hexdigest()[:16]


def _test_window(state: dict[str, Any], baseline: Any, taken: dict[str, Any], embeddings: bool, alpha: float,
                 report_dir: str | Path | None, endpoint: str, latency_p99_ms: float | None = None) -> dict[str, Any]:
    import numpy as np

    from monitoring.alerts import Signal
    from monitoring.window import drift_tests, hallucination_test

    embedded = None
    if embeddings and taken.get("prompt") is not None:
        from monitoring.embed import Embedder

        from launcher import index

        baseline.ensure_embeddings(Embedder.load(), index.home() / "monitor" / "cache")
        embedded = {"prompt": taken["prompt"], "response": taken["response"]}
    drift = drift_tests(baseline, taken["rows"], embedded, alpha)
    records = len(taken["ok"])
    hallucination = hallucination_test(sum(taken["flagged"]), records, baseline.hallucination_rate, alpha)
    share = hallucination_test(sum(taken["unsupported"]), sum(taken["facts"]), baseline.unsupported_share, alpha)
    window = {"id": _window_id(endpoint, taken), "start": min(taken["times"]), "end": max(taken["times"]), "records": records}
    examples = tuple(t for t in taken["texts"] if t)[:3]
    operational = _operational(taken, baseline, state["source"], endpoint, window, latency_p99_ms)
    report = ""
    if report_dir is not None:
        from monitoring.report import write_report

        report = str(write_report(Path(report_dir), endpoint, window, baseline, taken, drift, hallucination, operational,
                                  state["windows"], share))
    signals = []
    for side, tests in drift.items():
        for metric, test in tests.items():
            signals.append(Signal(endpoint=endpoint, kind="drift", metric=metric, value=test.p_value, threshold=test.threshold,
                                  breached=test.drifted, window=window, severity="warning", examples=(), report=report))
    signals.append(Signal(endpoint=endpoint, kind="hallucination", metric="hallucination_rate", value=hallucination.rate,
                          threshold=hallucination.threshold, breached=hallucination.breached, window=window,
                          severity="critical", examples=examples, report=report))
    signals.append(Signal(endpoint=endpoint, kind="hallucination", metric="unsupported_fact_share", value=share.rate,
                          threshold=share.threshold, breached=share.breached, window=window, severity="critical",
                          examples=examples, report=report))
    for metric, (value, threshold) in operational.items():
        signals.append(Signal(endpoint=endpoint, kind="operational", metric=metric, value=value, threshold=threshold,
                              breached=value > threshold, window=window, severity="critical", examples=(), report=report))
    return {**window, "drift": {side: {m: t.to_json() for m, t in tests.items()} for side, tests in drift.items()},
            "drifted": {side: any(t.drifted for t in tests.values()) for side, tests in drift.items()},
            "hallucination": hallucination.to_json(), "unsupported_share": share.to_json(), "operational": {m: {"value": v, "threshold": t} for m, (v, t) in operational.items()},
            "report": report, "flagged_share": float(np.mean(taken["flagged"])) if records else 0.0, "_signals": signals}


def _operational(taken: dict[str, Any], baseline: Any, source: str = "", endpoint: str = "",
                 window: dict[str, Any] | None = None, latency_p99_ms: float | None = None) -> dict[str, tuple[float, float]]:
    """Error rate and p99 latency: from the capture's own metadata where it carries them (our container
    writes them), else, for a SageMaker endpoint's capture in S3, from its CloudWatch metrics
    (``monitoring.operational``). The latency threshold is twice the baseline's p99, or ``latency_p99_ms``."""
    import numpy as np

    values: dict[str, float] = {}
    statuses = [s for s in taken.get("all_status", []) if s is not None]
    if statuses:
        values["error_rate"] = sum(1 for s in statuses if not 200 <= int(s) < 300) / len(statuses)
    latencies = [v for v in taken.get("all_latency", []) if v is not None]
    if latencies:
        values["latency_p99_ms"] = float(np.percentile(latencies, 99))
    if not values and source.startswith("s3://") and window:
        from monitoring.operational import sagemaker_metrics

        values = sagemaker_metrics(endpoint, window["start"], window["end"])
    out: dict[str, tuple[float, float]] = {}
    if "error_rate" in values:
        out["error_rate"] = (values["error_rate"], max(ERROR_RATE, (baseline.error_rate or 0) * 2))
    base = latency_p99_ms or ((baseline.latency_ms or {}).get("p99", 0) * LATENCY_FACTOR)
    if "latency_p99_ms" in values and base:
        out["latency_p99_ms"] = (values["latency_p99_ms"], base)
    return out


def _summary(window: dict[str, Any]) -> dict[str, Any]:
    return {"id": window["id"], "start": window["start"], "end": window["end"], "records": window["records"],
            "drifted": window["drifted"], "hallucination_rate": window["hallucination"]["rate"],
            "stats": {m: t["statistic"] for tests in window["drift"].values() for m, t in tests.items()},
            "p_values": {m: t["p_value"] for tests in window["drift"].values() for m, t in tests.items()}}


def _metrics_item(endpoint: str, window: dict[str, Any]) -> dict[str, Any]:
    values = {"HallucinationRate": window["hallucination"]["rate"], "UnsupportedFactShare": window["unsupported_share"]["rate"],
              "Records": float(window["records"]),
              "InputDrift": float(window["drifted"]["input"]), "OutputDrift": float(window["drifted"]["output"])}
    values.update({m: v["value"] for m, v in window["operational"].items()})
    return {"endpoint": endpoint, "window": {k: window[k] for k in ("id", "start", "end", "records")}, "values": values}


class _CrashAfterSend:
    """Tests only: the sink sends, then the process dies before the delivery is confirmed."""

    def __init__(self, sink: Any):
        self.sink, self.uri = sink, sink.uri

    def send(self, alert: Any) -> None:
        self.sink.send(alert)
        raise SystemExit(137)

    def metrics(self, *args: Any) -> None:
        self.sink.metrics(*args)


def _deliver(state: dict[str, Any], book: Any, sinks: list[Any], state_uri: str, token: str | None, sent: list[dict],
             crash_at: str | None) -> str | None:
    """Send the outbox (``monitoring.sinks.deliver``: alerts, each sink confirmed in the state as it
    takes one), then the windows' metrics. With no sink, the poll's own output (``alerts``) is the
    delivery."""
    from monitoring.sinks import deliver

    box = [token]

    def persist() -> None:
        state["alerts"] = book.to_dict()
        box[0] = store.save(state_uri, state, box[0])

    if not book.outbox and not state.get("metrics_outbox"):
        return token
    if sinks:
        targets = [_CrashAfterSend(sinks[0]), *sinks[1:]] if crash_at == "after-send" else list(sinks)
        delivered = deliver(book, targets, persist)
    else:
        delivered = list(book.outbox)
        for alert in delivered:
            book.mark_sent(alert.id)
        persist()
    sent += [alert.to_json() for alert in delivered]
    while state.get("metrics_outbox"):
        item = state["metrics_outbox"][0]
        for sink in sinks:
            sink.metrics(item["endpoint"], item["window"], item["values"])
        state["metrics_outbox"] = state["metrics_outbox"][1:]
        persist()
    return box[0]
