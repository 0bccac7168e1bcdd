"""The alert contract (monitoring/alerts.py): the schema, deterministic ids, de-duplication, cooldown,
hysteresis, and the outbox surviving a save and a restore."""

from __future__ import annotations

import json

import jsonschema
import pytest

from monitoring.alerts import ALERT_SCHEMA, Alert, AlertBook, Signal, alert_id

T0 = 1_796_000_000.0  # 2026-11-30


def window(n: int, records: int = 200) -> dict:
    return {"id": f"w{n:04d}", "start": f"2026-12-01T{n % 24:02d}:00:00Z", "end": f"2026-12-01T{n % 24:02d}:59:59Z",
            "records": records}


def rate(n: int, value: float, *, threshold: float = 0.10, endpoint: str = "claims", metric: str = "hallucination_rate") -> Signal:
    """A hallucination-rate signal for window n: breached when value >= threshold."""
    examples = [{"eventId": f"e{i}", "prompt": "Wage $900.", "response": "Pays $7,000.", "unsupported": ["$7,000"]}
                for i in range(5)]
    return Signal(endpoint, "hallucination", metric, value, threshold, value >= threshold, window(n),
                  examples=tuple(examples), report=f"reports/{window(n)['id']}.html")


def drift(n: int, breached: bool, p: float = 0.001) -> Signal:
    return Signal("claims", "drift", "output.response_length", p, 0.01, breached, window(n), severity="critical")


def states(alerts: list[Alert]) -> list[tuple[str, str]]:
    return [(a.metric, a.state) for a in alerts]


def test_an_alert_follows_the_schema_and_round_trips_through_json():
    book = AlertBook()
    [alert] = book.evaluate([rate(1, 0.25)], now=T0)
    payload = json.loads(json.dumps(alert.to_json()))
    jsonschema.Draft202012Validator.check_schema(ALERT_SCHEMA)
    jsonschema.validate(payload, ALERT_SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    assert payload["schema"] == "launcher.alert/v1"
    assert payload["state"] == "firing" and payload["value"] == 0.25 and payload["threshold"] == 0.10
    assert payload["window"] == window(1) and payload["report"] == "reports/w0001.html"
    assert payload["created_at"] == "2026-11-30T00:53:20Z"
    assert len(payload["examples"]) == 3, "at most three examples travel with an alert"
    assert payload["examples"][0] == {"eventId": "e0", "prompt": "Wage $900.", "response": "Pays $7,000.", "unsupported": ["$7,000"]}
    assert Alert.from_json(payload) == alert
    assert json.loads(alert.body()) == payload

    for broken in ({**payload, "kind": "vibes"}, {**payload, "id": "not-hex"}, {k: v for k, v in payload.items() if k != "window"},
                   {**payload, "examples": payload["examples"] * 2}, {**payload, "extra": 1}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, ALERT_SCHEMA)


def test_long_examples_are_cut_and_a_signal_refuses_an_unknown_kind():
    [alert] = AlertBook().evaluate([Signal("e", "hallucination", "hallucination_rate", 0.5, 0.1, True, window(1),
                                           examples=({"eventId": "x", "prompt": "p" * 5000, "response": "r"},))], now=T0)
    assert len(alert.examples[0]["prompt"]) == 2001 and alert.examples[0]["prompt"].endswith("…")
    assert alert.examples[0]["unsupported"] == []
    jsonschema.validate(alert.to_json(), ALERT_SCHEMA)
    with pytest.raises(ValueError, match="kind 'quality' is not one of drift, hallucination, operational"):
        Signal("e", "quality", "m", 1, 1, True, window(1))


def test_ids_are_deterministic_per_decision_and_differ_between_decisions():
    first = AlertBook().evaluate([rate(7, 0.3)], now=T0)[0]
    again = AlertBook().evaluate([rate(7, 0.4)], now=T0 + 999)[0]  # the same window decided again later
    assert first.id == again.id == alert_id("claims", "hallucination", "hallucination_rate", "w0007", "firing")
    assert len(first.id) == 20 and int(first.id, 16) >= 0
    others = {alert_id("claims", "hallucination", "hallucination_rate", "w0008", "firing"),
              alert_id("claims", "hallucination", "hallucination_rate", "w0007", "resolved"),
              alert_id("claims", "hallucination", "error_rate", "w0007", "firing"),
              alert_id("payroll", "hallucination", "hallucination_rate", "w0007", "firing")}
    assert first.id not in others and len(others) == 4


def test_no_second_firing_while_a_key_fires_and_keys_are_independent():
    book = AlertBook()
    assert states(book.evaluate([rate(1, 0.3)], now=T0)) == [("hallucination_rate", "firing")]
    assert book.evaluate([rate(2, 0.5), rate(3, 0.9)], now=T0 + 60) == []
    other = rate(3, 0.3, metric="hallucination_rate_names")
    assert states(book.evaluate([other, rate(3, 0.3, endpoint="payroll")], now=T0 + 120)) == [
        ("hallucination_rate_names", "firing"), ("hallucination_rate", "firing")]
    assert sorted(book.firing()) == [("claims", "hallucination", "hallucination_rate"),
                                     ("claims", "hallucination", "hallucination_rate_names"),
                                     ("payroll", "hallucination", "hallucination_rate")]


def test_resolving_needs_consecutive_clear_windows_below_the_hysteresis_band():
    book = AlertBook(resolve_after=2, resolve_ratio=0.8)
    book.evaluate([rate(1, 0.30)], now=T0)
    # 0.09 is under the threshold (not breached) but above 0.10 * 0.8: it does not count, and resets the count
    assert book.evaluate([rate(2, 0.05), rate(3, 0.09), rate(4, 0.05)], now=T0 + 10) == []
    [resolved] = book.evaluate([rate(5, 0.04)], now=T0 + 20)
    assert (resolved.state, resolved.window["id"], resolved.value) == ("resolved", "w0005", 0.04)
    assert resolved.examples == ()
    assert book.firing() == []
    # a breach in between restarts the count too
    book = AlertBook()
    book.evaluate([rate(1, 0.3)], now=T0)
    assert book.evaluate([rate(2, 0.01), rate(3, 0.2), rate(4, 0.01)], now=T0) == []
    assert states(book.evaluate([rate(5, 0.01)], now=T0)) == [("hallucination_rate", "resolved")]


def test_drift_resolves_on_its_test_decision_alone():
    book = AlertBook(resolve_after=2)
    assert [a.severity for a in book.evaluate([drift(1, True)], now=T0)] == ["critical"]
    # a p-value above the threshold is "not drifted"; no ratio band applies to a test's decision
    assert states(book.evaluate([drift(2, False, p=0.4), drift(3, False, p=0.02)], now=T0)) == [
        ("output.response_length", "resolved")]


def test_cooldown_suppresses_a_refiring_then_lets_a_lasting_breach_through():
    book = AlertBook(cooldown_s=3600, resolve_after=1)
    book.evaluate([rate(1, 0.3)], now=T0)
    book.evaluate([rate(2, 0.01)], now=T0 + 600)  # resolved at T0 + 600
    assert book.evaluate([rate(3, 0.4)], now=T0 + 1200) == []
    assert book.evaluate([rate(4, 0.4)], now=T0 + 600 + 3599) == []
    assert book.suppressed("claims", "hallucination", "hallucination_rate") == 2
    [again] = book.evaluate([rate(5, 0.4)], now=T0 + 600 + 3600)
    assert (again.state, again.window["id"]) == ("firing", "w0005")
    assert book.suppressed("claims", "hallucination", "hallucination_rate") == 0


def test_the_outbox_and_the_state_survive_a_restart():
    book = AlertBook(resolve_after=2)
    decided = book.evaluate([rate(1, 0.3), drift(1, True)], now=T0)
    assert book.outbox == decided
    book.mark_sent(decided[0].id, sink="log://")
    saved = json.loads(json.dumps(book.to_dict()))  # what the poller writes with its cursor

    restored = AlertBook.from_dict(saved)
    assert restored.outbox == decided, "killed before sending: everything decided is still to send"
    assert restored.sent_to(decided[0].id) == {"log://"} and restored.sent_to(decided[1].id) == frozenset()
    restored.mark_sent(decided[0].id)
    assert restored.outbox == [decided[1]]
    with pytest.raises(KeyError, match="is not in the outbox"):
        restored.mark_sent(decided[0].id)
    # the state came back too: no second firing, and the hysteresis count carries across restarts
    assert restored.evaluate([rate(2, 0.5), rate(3, 0.01)], now=T0 + 60) == []
    again = AlertBook.from_dict(json.loads(json.dumps(restored.to_dict())))
    assert states(again.evaluate([rate(4, 0.01)], now=T0 + 120)) == [("hallucination_rate", "resolved")]
    assert AlertBook.from_dict(None).to_dict() == {"version": 1, "keys": [], "outbox": [], "sent_to": {}}
