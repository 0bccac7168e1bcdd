"""Grounding without a judge: the facts in a response that its prompt does not support.

    g = ground(prompt, response)     # Grounding(score, unsupported, derived, flagged, facts)

Facts are ``launcher.facts``' (numbers and amounts, dates, proper names, citations), the same ones the
training entrypoint's factual-accuracy score counts. A response fact is **supported** when the prompt
states it (``facts.supported``), **derived** when it is a number the prompt's numbers give by simple
arithmetic, and **unsupported** otherwise. Derived numbers are what a good summary computes (the sum of
the holdings, two-thirds of a weekly wage, a percentage change, years until a goal): they are reported,
never flagged.

Derivations tried (``derivations``), over the prompt's numbers whose units agree with the response's
(an amount in USD comes from USD amounts or bare numbers; a percentage from a ratio):

* one number times 1/2, 1/3, 2/3, 1/4, 3/4, 2, 12 (a month -> a year), 1/12, 52 (a week -> a year), 1/52;
* two numbers: sum, difference, product, ratio, ratio as a percentage, ``p%`` of the other, and the
  percentage change from one to the other, one's share of the two;
* sums of three or four, or all, of the prompt's amounts of one unit (total holdings, holdings plus
  cash), and one amount's share of such a sum, as a percentage.

A derived value matches when it is within half a unit of the response's last stated digit (``$1,066.67``
matches 1066.666..., ``$1,067`` too), so rounding to cents or to whole dollars is accepted and a
different amount is not.

``score`` is the unsupported share of the response's facts (0: every fact backed; 0 when it states none);
``flagged`` is any unsupported fact. The embedding support score per response sentence (its best cosine
similarity to a prompt sentence) comes from ``monitoring.embed`` and is reported beside it, not used to
flag: without an NLI model, similarity says "on topic", not "true".
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from decimal import Decimal

from launcher import facts

FRACTIONS = (0.5, 1 / 3, 2 / 3, 0.25, 0.75, 2.0, 12.0, 1 / 12, 52.0, 1 / 52)


@dataclass(frozen=True)
class Grounding:
    score: float
    unsupported: list[str] = field(default_factory=list)  # the response's words for each ("$9,999", "O.C.G.A. 1-2-3")
    derived: list[str] = field(default_factory=list)
    facts: int = 0  # response facts checked
    support: list[float] = field(default_factory=list)  # per response sentence, when embeddings ran

    @property
    def flagged(self) -> bool:
        return bool(self.unsupported)

    def to_json(self) -> dict:
        return {"score": round(self.score, 4), "unsupported": self.unsupported, "derived": self.derived, "facts": self.facts,
                **({"support": [round(s, 3) for s in self.support]} if self.support else {})}


def _tolerance(value: str) -> float:
    """Half a unit of the last stated digit: 1066.67 -> 0.005, 1067 -> 0.5."""
    exponent = Decimal(value).normalize().as_tuple().exponent
    places = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    return 0.5 * 10 ** -places + 1e-9


def derivations(numbers: list[tuple[float, str]], unit: str) -> list[float]:
    """Values simple arithmetic gives from the prompt's ``(value, unit)`` numbers, for a response number
    in ``unit``."""
    if unit == "%":
        plain = [v for v, u in numbers if u in ("", "%")]
        money = [v for v, u in numbers if u not in ("%", "ordinal")]
        out = [v * f for v in plain for f in FRACTIONS]
        for a, b in itertools.permutations(money, 2):
            if b:
                out += [a / b * 100, (a - b) / b * 100, a / (a + b) * 100 if a + b else 0.0]
        for kind in {u for _, u in numbers if u not in ("%", "ordinal")}:  # a share of a total
            same_unit = [v for v, u in numbers if u == kind]
            out += [v / total * 100 for total in _subset_sums(same_unit) if total for v in same_unit]
        return out
    same = [v for v, u in numbers if u == unit or u == "" or unit == ""]
    out = [v * f for v in same for f in FRACTIONS]
    percents = [v for v, u in numbers if u == "%"]
    for a, b in itertools.combinations(same, 2):
        out += [a + b, abs(a - b), a * b]
        if a and b:
            out += [a / b, b / a]
    out += [a * p / 100 for a in same for p in percents]
    out += [a * (1 + p / 100) for a in same for p in percents] + [a * (1 - p / 100) for a in same for p in percents]
    for kind in {u for _, u in numbers if u not in ("%", "ordinal")}:
        out += _subset_sums([v for v, u in numbers if u == kind])
    return out


def _subset_sums(values: list[float]) -> list[float]:
    """Sums of 3 or 4 of the values (the holdings and the cash), and of all of them: a total the prompt
    does not state. Beyond 12 values, only the total (the combinations would match almost anything)."""
    out = [sum(values)] if len(values) > 2 else []
    if len(values) <= 12:
        out += [sum(c) for size in (3, 4) for c in itertools.combinations(values, size)]
    return out


def ground(prompt: str, response: str, *, prompt_facts: set[facts.Fact] | None = None,
           located: list[tuple[facts.Fact, int, int]] | None = None) -> Grounding:
    """The response's facts held against its prompt; ``unsupported`` and ``derived`` are the response's
    own words for them (its first statement of each). Facts already extracted may be passed in
    (``facts.extract(prompt, source=True)``, ``facts.located(response)``)."""
    located = facts.located(response) if located is None else located
    spans: dict[facts.Fact, str] = {}
    for fact, start, end in located:
        spans.setdefault(fact, response[start:end].strip().rstrip(".,;:-"))
    if not spans:
        return Grounding(0.0)
    sources = prompt_facts if prompt_facts is not None else facts.extract(prompt, source=True)
    numbers = [(float(f.value), f.unit) for f in sources if f.kind == "number"]
    unsupported, derived = [], []
    for fact, span in spans.items():
        if facts.supported(fact, sources):
            continue
        if fact.kind == "number" and fact.unit != "ordinal" and numbers:
            value, tolerance = float(fact.value), _tolerance(fact.value)
            if any(abs(value - c) <= tolerance for c in derivations(numbers, fact.unit)):
                derived.append(span)
                continue
        unsupported.append(span)
    return Grounding(len(unsupported) / len(spans), unsupported, derived, len(spans))
