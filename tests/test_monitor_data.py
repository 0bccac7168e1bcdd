"""The monitoring benchmark's labelled data says what is true: planted facts are absent from their
prompts (by launcher/facts.py), derived numbers are their arithmetic on the prompt's numbers, clean
responses state nothing unsupported, and windows have the sizes and shift points claimed."""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import monitor_data as md  # noqa: E402

from launcher import capture, facts  # noqa: E402


@pytest.fixture(scope="module")
def items():
    return md.hallucination_set(300, seed=3)


def test_every_label_kind_and_planted_kind_is_present(items):
    assert {i["label"] for i in items} == {"clean", "derived", "hallucinated"}
    assert {p["kind"] for i in items for p in i["planted"]} == set(facts.KINDS)
    assert {d["op"] for i in items for d in i["derived"]} >= {"sum", "percent", "two_thirds"}
    assert {i["domain"] for i in items} == {"client", "claims"}


def test_planted_facts_are_in_the_response_extractable_and_unsupported_by_the_prompt(items):
    for item in items:
        unsupported = facts.unsupported(item["response"], item["prompt"])
        for p in item["planted"]:
            fact = facts.Fact(*p["fact"])
            assert p["text"] in item["response"]
            assert fact in facts.extract(p["text"])
            assert fact in unsupported
            assert not facts.supported(fact, facts.extract(item["prompt"], source=True))
        assert (item["label"] == "hallucinated") == bool(item["planted"])


def test_planted_numbers_are_not_simple_arithmetic_on_the_prompt(items):
    for item in items:
        numbers = md.prompt_numbers(item["prompt"])
        for p in item["planted"]:
            if p["kind"] == "number":
                assert not md.derivable(Decimal(p["fact"][1]), numbers), (p, item["prompt"])


def test_derived_numbers_equal_their_arithmetic_and_are_not_stated_in_the_prompt(items):
    derived = [(i, d) for i in items for d in i["derived"]]
    assert derived
    for item, d in derived:
        numbers = md.prompt_numbers(item["prompt"])
        assert all(Decimal(o.replace("$", "").replace(",", "")) in numbers for o in d["operands"])
        exact = md.arithmetic(d["op"], d["operands"])
        assert abs(Decimal(d["value"]) - exact) <= Decimal("0.5") * Decimal(10) ** -d["places"]
        assert facts.Fact(*d["fact"]) in facts.extract(d["text"]) and Decimal(d["fact"][1]) == Decimal(d["value"])
        assert facts.Fact(*d["fact"]) in facts.unsupported(item["response"], item["prompt"])  # not literally there
    two_thirds = next(d for _, d in derived if d["op"] == "two_thirds")
    wage = Decimal(two_thirds["operands"][0].strip("$").replace(",", ""))
    assert Decimal(two_thirds["value"]) == (wage * 2 / 3).quantize(Decimal("0.01"))


def test_unsupported_facts_are_exactly_the_planted_and_derived_ones(items):
    for item in items:
        labelled = {facts.Fact(*e["fact"]) for e in item["planted"] + item["derived"]}
        assert facts.unsupported(item["response"], item["prompt"]) == labelled


def test_baseline_is_clean_and_seeded():
    pairs = md.baseline_pairs(200, seed=1)
    assert pairs == md.baseline_pairs(200, seed=1) != md.baseline_pairs(200, seed=2)
    assert all(not facts.unsupported(response, prompt) for prompt, response in pairs)


def test_windows_have_the_sizes_and_shift_points_claimed():
    w = md.drift_windows(n_none=3, replicates=2, seed=0, pre=2, post=1, size=50)
    assert [len(x.samples) for x in w["none"]] == [50] * 3
    assert len({tuple(x.pairs) for x in w["none"]}) == 3  # each a fresh sample
    assert not any(s.drifted for x in w["none"] for s in x.samples)
    assert set(w["scenarios"]) == set(md.SCENARIOS)
    for name, reps in w["scenarios"].items():
        _, sides, share, _ = md.SCENARIOS[name]
        for rep in reps:
            assert rep.shift_at == 100 and rep.first_after_shift == 2 and len(rep.windows) == 3
            before, after = rep.windows[:2], rep.windows[2]
            assert not any(s.drifted for x in before for s in x.samples) and not any(x.drifted for x in before)
            assert after.drifted and after.sides == sides and len(after.samples) == 50
            hit = sum(s.drifted for s in after.samples)
            assert hit == 50 if share == 1.0 else 0 < hit < 50
    topic = w["scenarios"]["input_topic"][0].windows[2].samples
    assert all(s.prompt.startswith("Claimant: ") for s in topic)
    cut = [s for s in w["scenarios"]["output_truncation"][0].windows[2].samples if s.drifted]
    assert all(s.finish_reason == "length" and not s.response.endswith(".") for s in cut)


def test_files_are_capture_records_and_match_the_manifest(tmp_path):
    m = md.write(tmp_path, baseline=20, hallucinations=30, n_none=2, replicates=1, size=10, seed=0)
    records = list(capture.read_records(tmp_path / m["baseline"]["file"]))
    assert len(records) == 20
    first = records[0]
    assert first.input_json()["messages"][1]["content"] == md.baseline_pairs(1, 0)[0][0]
    assert first.output_json()["choices"][0]["message"]["content"] == md.baseline_pairs(1, 0)[0][1]
    labels = [json.loads(line) for line in (tmp_path / m["hallucination"]["labels"]).read_text().splitlines()]
    outputs = [r.output_json()["choices"][0]["message"]["content"] for r in capture.read_records(tmp_path / m["hallucination"]["file"])]
    assert [label["response"] for label in labels] == outputs
    for name, scenario in m["scenarios"].items():
        run = scenario["replicates"][0]
        assert run["shift_at"] == 10 and [w["drifted"] for w in run["windows"]] == [False, True]
        assert all(len(list(capture.read_records(tmp_path / w["file"]))) == 10 for w in run["windows"])
    again = tmp_path / "again"
    md.write(again, baseline=20, hallucinations=30, n_none=2, replicates=1, size=10, seed=0)
    assert (again / "windows" / "none-0001.jsonl").read_bytes() == (tmp_path / "windows" / "none-0001.jsonl").read_bytes()
