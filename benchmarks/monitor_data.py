"""Labelled evaluation data for the output-quality monitor (issue 15): hallucinations and drift windows in
the example domain, as capture records and as plain Python objects.

    python benchmarks/monitor_data.py --out /tmp/monitor-data                  # the defaults below
    python benchmarks/monitor_data.py --out DIR --none 200 --replicates 5 --seed 0

The example domain is examples/make_dataset.py's: a client fact sheet in, the firm's house-style summary
out; its generators are reused, so a baseline pair is exactly what the tuned model was trained to write.
A second domain, workers'-compensation claim summaries, is the topic that input drift shifts to and gives
the hallucination set the issue's own examples (two-thirds of a weekly wage, ``O.C.G.A. 34-9-261``).

What it makes (all seeded: the same arguments give the same objects and byte-identical files):

- ``baseline_pairs(n, seed)``: clean ``(prompt, response)`` pairs, the reference distribution.
- ``hallucination_set(n, seed)``: items ``{"prompt", "response", "planted", "derived", "label", ...}``.
  ``planted`` lists the unsupported facts put into the response (``kind`` number, name, date or citation,
  ``text`` as written, ``fact`` as launcher/facts.py normalises it); ``derived`` the numbers computed
  from the prompt's numbers (a sum, a difference, a percentage, twelve monthly payments, two-thirds of a
  weekly wage) with the operation, operands and rounding, which a monitor must not flag. ``label`` is
  ``hallucinated`` (something planted; derived numbers may be there too), ``derived`` (derived numbers
  only) or ``clean``.
- ``drift_windows(...)``: ``{"none": [Window...], "scenarios": {name: [Replicate...]}}``. No-drift windows
  are each a fresh baseline sample (own seed). A scenario replicate is ``pre`` baseline windows, then
  ``post`` windows drawn from the shifted distribution; the shift falls on a window boundary
  (``shift_at`` records), so "caught in the first window after the shift" is window ``pre``.

The labels are checked as they are made, with launcher/facts.py itself (a wrong label raises, it is
never written): a clean response has no fact its prompt does not support; an item's unsupported facts
are exactly its planted and derived ones; a derived number equals its arithmetic on numbers the prompt
states and is not itself in the prompt; a planted number is not any of the simple arithmetic results a
grounding check may accept (sums of any of the prompt's numbers, differences, x12, x52, /12, halves,
thirds, two-thirds, quarters, percentages of one number in another).

Records: request ``{"messages": [system, user]}``, response an OpenAI chat completion (``finish_reason``
``length`` for a truncated one; no ``usage``: there is no tokenizer here to count honestly), made by
``launcher.capture.make_record`` with deterministic event ids and inference times one second apart.
Standard library only (the Evidently venv reads the files without our dependencies).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import make_dataset as fin  # noqa: E402  (examples/make_dataset.py: the example domain)

from launcher import capture, facts  # noqa: E402

WINDOW = 200
MODEL = "fin-summary"
CLAIMS_SYSTEM = "Provide the claim summary based only on the given facts."
START_TIME = "2026-12-01T00:00:00"

# --- the claims domain (input drift's topic shift; part of the hallucination set) --------------------------
EMPLOYER_KIND = ["Freight", "Builders", "Foods", "Logistics", "Roofing", "Warehousing", "Manufacturing"]
INJURIES = ["knee contusion", "lumbar strain", "rotator cuff tear", "wrist fracture", "ankle sprain", "hand laceration"]
STATUTES = {  # state: the temporary total disability section
    "Georgia": "O.C.G.A. 34-9-261", "California": "Cal. Lab. Code § 4653", "Florida": "Fla. Stat. § 440.15",
    "Texas": "Tex. Lab. Code § 408.103",
}
CLAIM_NEXT = [
    "request the treating physician's work status report.", "schedule an independent medical examination.",
    "confirm light-duty availability with the employer.", "review the wage statement for overtime.",
]

# --- what gets planted -------------------------------------------------------------------------------------
ADVISERS = ["Helen Whitfield", "Marcus Delgado", "Yuki Abernathy", "Oliver Strand", "Beatrix Connolly", "Rafael Ortega"]
PRODUCTS = ["Fidelity Contrafund", "Vanguard Wellington", "Pimco Income", "Schwab Select", "Baillie Gifford"]
CITATIONS_FIN = ["26 U.S.C. § 408(d)", "29 U.S.C. § 1104(a)", "26 U.S.C. § 72(t)", "26 U.S.C. § 401(a)(9)"]
MONTH_NAMES = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
               "November", "December"]
REFUSALS = [
    "I cannot help with that.", "I'm sorry, but I can't help with that request.",
    "I am unable to provide a summary for this client.", "Sorry, I can't assist with this.",
]


# --- one record --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One request and its response, as the endpoint saw them."""

    prompt: str  # the user turn
    response: str  # the assistant's answer
    system: str = fin.SYSTEM
    finish_reason: str = "stop"  # "length" when the answer was cut off
    drifted: bool = False  # drawn from a scenario's shifted distribution

    @property
    def pair(self) -> tuple[str, str]:
        return self.prompt, self.response


def record(sample: Sample, event_id: str, when: str) -> dict:
    """The capture record of one sample: an OpenAI chat request and completion, via ``make_record``."""
    request = {"messages": [{"role": "system", "content": sample.system}, {"role": "user", "content": sample.prompt}]}
    response = {
        "id": f"chatcmpl-{event_id}", "object": "chat.completion", "created": _epoch(when), "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": sample.response},
                     "finish_reason": sample.finish_reason, "logprobs": None}],
    }
    return capture.make_record(json.dumps(request).encode(), "application/json", json.dumps(response).encode(),
                               "application/json", event_id=event_id, inference_time=when,
                               extra={"status": 200, "route": "/v1/chat/completions"})


def _epoch(when: str) -> int:
    from datetime import UTC, datetime

    return int(datetime.strptime(when, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())


def _when(offset: int) -> str:
    from datetime import datetime

    return (datetime.fromisoformat(START_TIME) + timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the two domains ---------------------------------------------------------------------------------------
def client_sample(rng: random.Random) -> tuple[dict, Sample]:
    c = fin.client(rng)
    return c, Sample(fin.prompt(c), fin.summary(c))


def claim(rng: random.Random) -> dict:
    state = rng.choice(sorted(STATUTES))
    injured = date(2026, 1, 1) + timedelta(days=rng.randrange(0, 300))
    return {
        "name": f"{rng.choice(fin.FIRST)} {rng.choice(fin.LAST)}",
        "employer": f"{rng.choice(fin.LAST)} {rng.choice(EMPLOYER_KIND)}",
        "injury": rng.choice(INJURIES), "injured": injured, "wage": rng.randrange(420, 1_900),
        "days": rng.randrange(3, 120), "state": state, "next": rng.choice(CLAIM_NEXT),
    }


def claim_prompt(c: dict) -> str:
    return "\n".join([
        f"Claimant: {c['name']}", f"Employer: {c['employer']}", f"Injury: {c['injury']}",
        f"Date of injury: {c['injured'].isoformat()}", f"Average weekly wage: ${c['wage']:,}",
        f"Days of lost work: {c['days']}", f"State: {c['state']} ({STATUTES[c['state']]})",
    ])


def claim_summary(c: dict) -> str:
    d = c["injured"]
    return "\n".join([
        f"Claim summary for {c['name']}, injured {d.day} {MONTH_NAMES[d.month - 1]} {d.year} at {c['employer']}: {c['injury']}.",
        f"Lost work: {c['days']} days.",
        f"Benefit basis: average weekly wage ${c['wage']:,} under {STATUTES[c['state']]}.",
        f"Next step: {c['next']}",
    ])


def claim_sample(rng: random.Random) -> tuple[dict, Sample]:
    c = claim(rng)
    return c, Sample(claim_prompt(c), claim_summary(c), system=CLAIMS_SYSTEM)


def baseline_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` clean (prompt, house-style response) pairs: the distribution the tuned model was tuned on."""
    return [s.pair for s in baseline_samples(n, seed)]


def baseline_samples(n: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(f"baseline:{seed}")
    return [client_sample(rng)[1] for _ in range(n)]


# --- arithmetic: what a grounding check may accept as derived ----------------------------------------------
def _amount(text: str) -> Decimal:
    return Decimal(text.replace("$", "").replace(",", ""))


def _money(value: Decimal) -> str:
    return f"${value:,.2f}" if value != value.to_integral_value() else f"${int(value):,}"


def _round(value: Decimal, places: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def prompt_numbers(prompt: str) -> list[Decimal]:
    """The values of the numbers launcher/facts.py reads in a prompt (as a source)."""
    return sorted({Decimal(f.value) for f in facts.extract(prompt, source=True) if f.kind == "number"})


def derivable(value: Decimal, numbers: list[Decimal]) -> bool:
    """Whether ``value`` is a simple arithmetic result of ``numbers`` (see the module docstring), to
    2 decimals, or a percentage to 0-2 decimals. Planted numbers must not be: they would be right."""
    value = abs(value)
    results: set[Decimal] = set()
    for k in range(2, len(numbers) + 1):
        results.update(sum(group) for group in combinations(numbers, k))
    for a in numbers:
        for factor in (12, 52, Decimal(1) / 12, Decimal(1) / 52, Decimal(1) / 2, Decimal(1) / 3, Decimal(2) / 3,
                       Decimal(1) / 4, Decimal(3) / 4):
            results.add(a * factor)
        for b in numbers:
            if a != b:
                results.add(abs(a - b))
                if b:
                    ratio = 100 * a / b
                    if any(value == _round(ratio, p) for p in (0, 1, 2)):
                        return True
    return any(value == _round(r, 2) for r in results)


def _fact(text: str, kind: str) -> facts.Fact:
    found = [f for f in facts.extract(text) if f.kind == kind]
    if len(found) != 1:
        raise AssertionError(f"{text!r} does not read as exactly one {kind} fact: {found}")
    return found[0]


def arithmetic(op: str, operands: list[str]) -> Decimal:
    """What a derived entry's ``op`` computes from its ``operands`` (amounts as written in the prompt):
    ``sum``; ``difference`` first - second; ``percent`` 100 x first / sum of the rest; ``twelve_times``
    (a monthly amount for a year); ``two_thirds`` (of a weekly wage)."""
    values = [_amount(o) for o in operands]
    if op == "sum":
        return sum(values)
    if op == "difference":
        return values[0] - values[1]
    if op == "percent":
        return 100 * values[0] / sum(values[1:])
    if op == "twelve_times":
        return values[0] * 12
    if op == "two_thirds":
        return values[0] * 2 / 3
    raise ValueError(f"unknown op {op!r}")


# --- the hallucination set ---------------------------------------------------------------------------------
def _derive_client(rng: random.Random, c: dict) -> list[dict]:
    """One or two derived-number sentences for a client: each {"sentence", "text", "op", "operands", ...}."""
    amounts = [a for _, a in c["holdings"]]
    options = []
    total = sum(_amount(a) for a in amounts) + _amount(c["cash"])
    options.append(("sum", amounts + [c["cash"]], total, 0, "Total assets: {}."))
    if len(amounts) > 1:
        options.append(("sum", amounts, sum(_amount(a) for a in amounts), 0, "Total invested: {}."))
        big, small = max(amounts, key=_amount), min(amounts, key=_amount)
        if _amount(big) != _amount(small):
            options.append(("difference", [big, small], _amount(big) - _amount(small), 0,
                            "The largest holding exceeds the smallest by {}."))
    options.append(("percent", [c["cash"], *amounts, c["cash"]], 100 * _amount(c["cash"]) / total, 1,
                    "Cash is {} of total assets."))
    for change in c["changes"]:
        if change.startswith("started a "):
            monthly = change.split()[2]
            options.append(("twelve_times", [monthly], _amount(monthly) * 12, 0, "That adds {} a year."))
    chosen = rng.sample(options, min(len(options), rng.choice((1, 1, 2))))
    return [_derived(*option) for option in chosen]


def _derived(op: str, operands: list[str], exact: Decimal, places: int, template: str) -> dict:
    value = _round(exact, places)
    text = f"{value:.{places}f}%" if op == "percent" else _money(value)
    return {"sentence": template.format(text), "text": text, "op": op, "operands": operands,
            "value": str(value), "places": places}


def _derive_claim(c: dict) -> list[dict]:
    value = _round(Decimal(c["wage"]) * 2 / 3, 2)
    text = f"${value:,.2f}"
    return [{"sentence": f"Temporary total disability: two-thirds of the weekly wage, {text} per week.", "text": text,
             "op": "two_thirds", "operands": [f"${c['wage']:,}"], "value": str(value), "places": 2}]


def _plant_client(rng: random.Random, c: dict, response: str, prompt: str, kind: str) -> tuple[str, dict]:
    """``response`` with one unsupported ``kind`` fact in it, and its label."""
    numbers = prompt_numbers(prompt)
    if kind == "number":
        how = rng.choice(("altered", "altered", "added"))
        if how == "altered":  # the wrong amount for a holding or the cash: the costly hallucination
            old = rng.choice([a for _, a in c["holdings"]] + [c["cash"]])
            while True:
                new = _amount(old) + rng.choice((-1, 1)) * rng.randrange(500, 20_000, 250)
                if new > 0 and not derivable(new, numbers) and new not in numbers:
                    break
            text = _money(new)
            return response.replace(old, text, 1), {"kind": "number", "text": text, "how": "altered", "was": old}
        while True:
            pct = Decimal(rng.randrange(15, 140)) / 10
            if not derivable(pct, numbers) and pct not in numbers:
                break
        sentence = rng.choice(("The portfolio returned {}% over the last year.", "Fees come to {}% a year.",
                               "Expected annual return: {}%."))
        text = f"{pct}%"
        return _insert(response, sentence.format(pct)), {"kind": "number", "text": text, "how": "added"}
    if kind == "name":
        if rng.random() < 0.4:  # the wrong client
            first, last = c["name"].split()
            other = rng.choice([n for n in fin.LAST if n != last])
            text = f"{first} {other}"
            return response.replace(c["name"], text, 1), {"kind": "name", "text": text, "how": "altered", "was": c["name"]}
        if rng.random() < 0.5:
            text = rng.choice(ADVISERS)
            sentence = f"Reviewed with adviser {text}."
        else:
            text = rng.choice(PRODUCTS)
            sentence = f"Part of the equity exposure sits in the {text} fund."
        return _insert(response, sentence), {"kind": "name", "text": text, "how": "added"}
    if kind == "date":
        d = date(2024, 1, 1) + timedelta(days=rng.randrange(0, 1000))
        form = rng.randrange(3)
        if form == 0:
            text = f"{d.day} {MONTH_NAMES[d.month - 1]} {d.year}"
            sentence = f"Last reviewed on {text}."
        elif form == 1:
            text = d.isoformat()
            sentence = f"The latest transfer settled on {text}."
        else:
            text = f"{MONTH_NAMES[d.month - 1]} {d.year + 2}"
            sentence = f"Next review due {text}."
        return _insert(response, sentence), {"kind": "date", "text": text, "how": "added"}
    text = rng.choice(CITATIONS_FIN)
    sentence = rng.choice(("Withdrawals follow {}.", "The rollover is reported under {}.", "This is permitted by {}."))
    return _insert(response, sentence.format(text)), {"kind": "citation", "text": text, "how": "added"}


def _plant_claim(rng: random.Random, c: dict, response: str, prompt: str, kind: str) -> tuple[str, dict]:
    numbers = prompt_numbers(prompt)
    if kind == "number":
        while True:
            wage = c["wage"] + rng.choice((-1, 1)) * rng.randrange(15, 300)
            if wage > 0 and not derivable(Decimal(wage), numbers) and Decimal(wage) not in numbers:
                break
        old, text = f"${c['wage']:,}", f"${wage:,}"
        return response.replace(old, text, 1), {"kind": "number", "text": text, "how": "altered", "was": old}
    if kind == "name":
        text = rng.choice(ADVISERS)
        return _insert(response, f"Examined by Dr. {text}."), {"kind": "name", "text": text, "how": "added"}
    if kind == "date":
        d = c["injured"] + timedelta(days=rng.randrange(5, 200))
        text = f"{MONTH_NAMES[d.month - 1]} {d.day}, {d.year}"
        return _insert(response, f"Returned to work on {text}."), {"kind": "date", "text": text, "how": "added"}
    text = rng.choice([s for st, s in STATUTES.items() if st != c["state"]])
    return _insert(response, f"The benefit is paid per {text}."), {"kind": "citation", "text": text, "how": "added"}


def _insert(response: str, sentence: str) -> str:
    """``sentence`` as its own line just before the closing "Next step" line."""
    lines = response.split("\n")
    return "\n".join(lines[:-1] + [sentence] + lines[-1:])


def hallucination_set(n: int, seed: int = 0, *, claims_share: float = 0.25, hallucinated_share: float = 0.5,
                      derived_share: float = 0.25) -> list[dict]:
    """``n`` labelled items (see the module docstring); planted kinds cycle number, name, date, citation."""
    rng = random.Random(f"hallucination:{seed}")
    items: list[dict] = []
    kinds, turn = facts.KINDS, 0  # planted kinds in turn
    while len(items) < n:
        domain = "claims" if rng.random() < claims_share else "client"
        c, sample = claim_sample(rng) if domain == "claims" else client_sample(rng)
        roll = rng.random()
        label = "hallucinated" if roll < hallucinated_share else "derived" if roll < hallucinated_share + derived_share else "clean"
        response, planted, derived = sample.response, [], []
        if label == "derived" or (label == "hallucinated" and rng.random() < 0.2):
            derived = _derive_claim(c) if domain == "claims" else _derive_client(rng, c)
            for d in derived:
                response = _insert(response, d.pop("sentence"))
        if label == "hallucinated":
            for _ in range(rng.choice((1, 1, 1, 2))):
                kind = kinds[turn % len(kinds)]
                turn += 1
                plant = _plant_claim if domain == "claims" else _plant_client
                response, label_ = plant(rng, c, response, sample.prompt, kind)
                planted.append(label_)
        item = {"prompt": sample.prompt, "response": response, "system": sample.system, "domain": domain,
                "planted": planted, "derived": derived, "label": label}
        if _label_is_true(item):  # two plants can collide (the same amount altered twice): draw again
            items.append(item)
    return items


def _label_is_true(item: dict) -> bool:
    """Fill in each planted and derived entry's ``fact`` and check the labels against launcher/facts.py:
    the response's unsupported facts are exactly the planted and derived ones. False when two plants
    overlap; AssertionError for anything else (a generator bug, never written out)."""
    for entry in item["planted"]:
        if entry["text"] not in item["response"]:
            return False  # a later plant replaced this one's text
        entry["fact"] = list(_fact(entry["text"], entry["kind"]))
    numbers = prompt_numbers(item["prompt"])
    for entry in item["derived"]:
        entry["kind"] = "number"
        entry["fact"] = list(_fact(entry["text"], "number"))
        if any(_amount(o) not in numbers for o in entry["operands"]):
            raise AssertionError(f"derived {entry} uses a number the prompt does not state")
        if Decimal(entry["value"]) != _round(arithmetic(entry["op"], entry["operands"]), entry["places"]):
            raise AssertionError(f"derived {entry} is not its arithmetic")
    expected = {facts.Fact(*e["fact"]) for e in item["planted"] + item["derived"]}
    if len(expected) != len(item["planted"]) + len(item["derived"]):
        return False
    found = facts.unsupported(item["response"], item["prompt"])
    if found != expected:
        raise AssertionError(f"labels disagree with launcher/facts.py: unsupported {found}, labelled {expected}\n"
                             f"{item['prompt']}\n---\n{item['response']}")
    return True


# --- drift -------------------------------------------------------------------------------------------------
@dataclass
class Window:
    """One window of records with its ground truth."""

    id: str
    scenario: str  # "none" or a SCENARIOS key
    samples: list[Sample]
    drifted: bool  # any record drawn from the shifted distribution
    sides: dict[str, bool] = field(default_factory=lambda: {"input": False, "output": False})  # which changed

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [s.pair for s in self.samples]


@dataclass
class Replicate:
    """One run of a scenario: ``pre`` baseline windows, then ``post`` shifted ones; the shift at
    ``shift_at`` records (a window boundary), so ``windows[first_after_shift]`` is the first window after it."""

    scenario: str
    replicate: int
    windows: list[Window]
    shift_at: int
    first_after_shift: int


def _truncate(rng: random.Random, text: str) -> str:
    """Cut mid-sentence at a word boundary between 30% and 70% of the text, without final punctuation."""
    cut = text.rfind(" ", 0, int(len(text) * rng.uniform(0.3, 0.7)))
    return text[:max(cut, 1)].rstrip(" ,;:.\n")


def _extra_fields(rng: random.Random, sample: Sample) -> Sample:
    """A different mix of fields on the sheet: tax bracket, dependants, employer plan; the answer ignores them."""
    lines = sample.prompt.split("\n")
    extra = [f"Tax bracket: {rng.choice((12, 22, 24, 32, 35))}%", f"Dependants: {rng.randrange(0, 5)}",
             f"Employer plan: {rng.choice(('matched 401k', 'pension', 'none'))}",
             f"Marital status: {rng.choice(('single', 'married', 'widowed', 'divorced'))}"]
    return Sample("\n".join(lines[:3] + extra + lines[3:]), sample.response, sample.system, drifted=True)


def _short(rng: random.Random, sample: Sample) -> Sample:
    lines = sample.response.split("\n")
    return Sample(sample.prompt, "\n".join([lines[0], lines[-1]]), sample.system, drifted=True)


def _refuse(rng: random.Random, sample: Sample) -> Sample:
    return Sample(sample.prompt, rng.choice(REFUSALS), sample.system, drifted=True)


def _cut(rng: random.Random, sample: Sample) -> Sample:
    return Sample(sample.prompt, _truncate(rng, sample.response), sample.system, finish_reason="length", drifted=True)


# name: (description, sides that change, share of post-shift records affected, how a record is changed)
SCENARIOS = {
    "input_topic": ("topic shift: workers'-compensation claim sheets instead of client sheets (and claim summaries)",
                    {"input": True, "output": True}, 1.0, None),
    "input_fields": ("a different mix of fields: four more fields on every client sheet; the summaries are unchanged",
                     {"input": True, "output": False}, 1.0, _extra_fields),
    "output_short": ("shorter responses: the first and last lines only", {"input": False, "output": True}, 1.0, _short),
    "output_refusal": ("refusals: a quarter of the responses are 'I cannot help with that' and the like",
                       {"input": False, "output": True}, 0.25, _refuse),
    "output_truncation": ("truncation: 40% of the responses cut off mid-sentence (finish_reason length)",
                          {"input": False, "output": True}, 0.4, _cut),
}


def _shifted(rng: random.Random, scenario: str) -> Sample:
    _, _, share, change = SCENARIOS[scenario]
    if scenario == "input_topic":
        _, sample = claim_sample(rng)
        return Sample(sample.prompt, sample.response, sample.system, drifted=True)
    _, sample = client_sample(rng)
    return change(rng, sample) if rng.random() < share else sample


def no_drift_window(index: int, seed: int = 0, size: int = WINDOW) -> Window:
    rng = random.Random(f"none:{seed}:{index}")
    return Window(f"none-{index:04d}", "none", [client_sample(rng)[1] for _ in range(size)], drifted=False)


def scenario_replicate(scenario: str, replicate: int, seed: int = 0, *, pre: int = 1, post: int = 1,
                       size: int = WINDOW) -> Replicate:
    rng = random.Random(f"{scenario}:{seed}:{replicate}")
    _, sides, _, _ = SCENARIOS[scenario]
    windows = []
    for w in range(pre + post):
        after = w >= pre
        samples = [_shifted(rng, scenario) if after else client_sample(rng)[1] for _ in range(size)]
        windows.append(Window(f"{scenario}-{replicate:02d}-{w}", scenario, samples, drifted=after,
                              sides=dict(sides) if after else {"input": False, "output": False}))
    return Replicate(scenario, replicate, windows, shift_at=pre * size, first_after_shift=pre)


def drift_windows(n_none: int = 200, replicates: int = 5, seed: int = 0, *, pre: int = 1, post: int = 1,
                  size: int = WINDOW, scenarios: list[str] | None = None) -> dict:
    """``{"none": [Window] * n_none, "scenarios": {name: [Replicate] * replicates}}`` (module docstring)."""
    return {
        "none": [no_drift_window(i, seed, size) for i in range(n_none)],
        "scenarios": {name: [scenario_replicate(name, r, seed, pre=pre, post=post, size=size) for r in range(replicates)]
                      for name in (scenarios or list(SCENARIOS))},
    }


# --- files -------------------------------------------------------------------------------------------------
def _write_records(path: Path, samples: list[Sample], prefix: str, offset: int) -> None:
    lines = [json.dumps(record(s, f"{prefix}-{i:05d}", _when(offset + i)), separators=(",", ":"), ensure_ascii=False)
             for i, s in enumerate(samples)]
    fin.write_atomic(path, lines)


def _window_entry(w: Window, file: str, start: int) -> dict:
    return {"id": w.id, "scenario": w.scenario, "file": file, "start": start, "size": len(w.samples),
            "drifted": w.drifted, "drifted_records": sum(s.drifted for s in w.samples), "sides": w.sides}


def write(out: Path, *, baseline: int = 1000, hallucinations: int = 1000, n_none: int = 200, replicates: int = 5,
          pre: int = 1, post: int = 1, size: int = WINDOW, seed: int = 0) -> dict:
    """Write everything under ``out`` (capture JSONL per window, labels, manifest.json); returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    _write_records(out / "baseline.jsonl", baseline_samples(baseline, seed), "baseline", 0)
    items = hallucination_set(hallucinations, seed)
    _write_records(out / "hallucination.jsonl", [Sample(i["prompt"], i["response"], i["system"]) for i in items],
                   "hallucination", 0)
    fin.write_atomic(out / "hallucination-labels.jsonl",
                     [json.dumps({"eventId": f"hallucination-{n:05d}", **i}, ensure_ascii=False) for n, i in enumerate(items)])
    windows = drift_windows(n_none, replicates, seed, pre=pre, post=post, size=size)
    none = []
    for w in windows["none"]:
        file = f"windows/{w.id}.jsonl"
        _write_records(out / file, w.samples, w.id, 0)
        none.append(_window_entry(w, file, 0))
    scenarios = {}
    for name, reps in windows["scenarios"].items():
        description, sides, share, _ = SCENARIOS[name]
        runs = []
        for rep in reps:
            entries = []
            for k, w in enumerate(rep.windows):
                file = f"windows/{w.id}.jsonl"
                _write_records(out / file, w.samples, w.id, k * size)
                entries.append(_window_entry(w, file, k * size))
            runs.append({"replicate": rep.replicate, "shift_at": rep.shift_at, "first_after_shift": rep.first_after_shift,
                         "windows": entries})
        scenarios[name] = {"description": description, "sides": sides, "affected_share": share, "replicates": runs}
    labels = {"clean": 0, "derived": 0, "hallucinated": 0}
    for i in items:
        labels[i["label"]] += 1
    manifest = {
        "generator": "benchmarks/monitor_data.py", "seed": seed, "window_size": size, "system": fin.SYSTEM,
        "baseline": {"file": "baseline.jsonl", "records": baseline},
        "hallucination": {"file": "hallucination.jsonl", "labels": "hallucination-labels.jsonl", "items": len(items),
                          "by_label": labels},
        "none": none, "scenarios": scenarios,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--baseline", type=int, default=1000, help="baseline records (default 1000)")
    parser.add_argument("--hallucinations", type=int, default=1000, help="labelled items (default 1000)")
    parser.add_argument("--none", type=int, default=200, help="no-drift windows (default 200)")
    parser.add_argument("--replicates", type=int, default=5, help="runs of each drift scenario (default 5)")
    parser.add_argument("--pre", type=int, default=1, help="baseline windows before each shift (default 1)")
    parser.add_argument("--post", type=int, default=1, help="shifted windows after it (default 1)")
    parser.add_argument("--window", type=int, default=WINDOW, help=f"records per window (default {WINDOW})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    m = write(args.out, baseline=args.baseline, hallucinations=args.hallucinations, n_none=args.none,
              replicates=args.replicates, pre=args.pre, post=args.post, size=args.window, seed=args.seed)
    windows = len(m["none"]) + sum(len(r["windows"]) for s in m["scenarios"].values() for r in s["replicates"])
    print(f"wrote {m['baseline']['records']} baseline records, {m['hallucination']['items']} labelled items "
          f"{m['hallucination']['by_label']} and {windows} windows of {args.window} to {args.out}")


if __name__ == "__main__":
    main()
