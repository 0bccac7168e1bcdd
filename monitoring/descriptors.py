"""Per-record text descriptors, the input side and the output side, for drift (stdlib only).

    row = describe(prompt, response, finish_reason)   # {"input.prompt_words": 41.0, ..., "output.refusal": 0.0}

Input: ``prompt_words``, ``prompt_lines``, ``prompt_numbers`` (facts.py's numbers). Output:
``response_words``, ``response_prompt_ratio`` (words over prompt words), ``empty``, ``truncated``
(``finish_reason`` "length" where the capture says, else a non-empty answer that stops mid-sentence:
no closing punctuation), ``refusal`` (the phrasing of a model declining), ``repetition`` (the share of the
response's word 3-grams that repeat an earlier one), ``numbers`` (facts.py's numbers in the response).
The hallucination score is grounding's (``monitoring.grounding``), kept apart: it is a rate against the
baseline's, not a distribution.

``BINARY`` names the 0/1 descriptors (tested as proportions); the rest are counts and ratios (tested as
distributions). The response/prompt ratio (``JOINT``) is recorded and plotted but in neither side's
tests: a longer prompt with the same answers would otherwise blame the output.
"""

from __future__ import annotations

import re

from launcher import facts

INPUT = ("input.prompt_words", "input.prompt_lines", "input.prompt_numbers")
OUTPUT = ("output.response_words", "output.empty", "output.truncated", "output.refusal", "output.repetition", "output.numbers")
JOINT = ("output.response_prompt_ratio",)  # moves when either side does: shown and reported, not tested for a side
NAMES = INPUT + OUTPUT + JOINT
BINARY = frozenset({"output.empty", "output.truncated", "output.refusal"})

_WORD = re.compile(r"\w+")
_REFUSAL = re.compile(
    r"\b(i\s*(?:am|'m)\s*(?:sorry|unable|not able)|i\s*(?:can(?:no|')t|cannot|won't|will not)\s+(?:help|assist|provide|do|answer|comply)"
    r"|as an ai\b|i\s*(?:am|'m)\s*not (?:allowed|permitted)|(?:cannot|can't|unable to) (?:help|assist) with)", re.I)
_CLOSED = re.compile(r"[.!?)\]\"'”’:;…*`]\s*$")


def _numbers(found: set[facts.Fact]) -> int:
    return sum(1 for f in found if f.kind == "number")


def repetition(words: list[str]) -> float:
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def describe(prompt: str, response: str, finish_reason: str | None = None, *, prompt_facts: set[facts.Fact] | None = None,
             response_facts: set[facts.Fact] | None = None) -> dict[str, float]:
    """The descriptors of one exchange (facts already extracted may be passed in, to extract them once)."""
    prompt_facts = facts.extract(prompt, source=True) if prompt_facts is None else prompt_facts
    response_facts = facts.extract(response) if response_facts is None else response_facts
    prompt_words = len(_WORD.findall(prompt))
    words = [w.lower() for w in _WORD.findall(response)]
    stripped = response.strip()
    truncated = finish_reason == "length" if finish_reason else bool(stripped) and not _CLOSED.search(stripped)
    return {
        "input.prompt_words": float(prompt_words),
        "input.prompt_lines": float(len([line for line in prompt.splitlines() if line.strip()])),
        "input.prompt_numbers": float(_numbers(prompt_facts)),
        "output.response_words": float(len(words)),
        "output.response_prompt_ratio": len(words) / max(prompt_words, 1),
        "output.empty": float(not stripped),
        "output.truncated": float(truncated),
        "output.refusal": float(bool(_REFUSAL.search(response))),
        "output.repetition": repetition(words),
        "output.numbers": float(_numbers(response_facts)),
    }
