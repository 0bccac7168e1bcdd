"""Checkable facts in model text (numbers, dates, names, citations) and the fact precision and recall
of an evaluation.

ROUGE, BLEU and chrF reward wording: a tuned model that copies a summary's phrasing but names the wrong
client, year or amount still scores well on them. ``extract`` pulls out the facts a reader would check;
``score`` and ``corpus_scores`` hold an answer to its prompt and reference (evaluation), ``unsupported``
lists what no source backs (grounding a response against its prompt, for monitoring). Stdlib only.

Design decisions:

- A ``Fact`` is a kind (``number``, ``date``, ``name``, ``citation``), a normalised value and, for
  numbers, a unit, so equal facts are equal tuples: ``$1,200.00`` and ``USD 1200`` are
  ``number 1200 USD``; ``5 per cent`` is ``number 5 %``; ``$2.3M`` is ``number 2300000 USD``; every
  date form is ISO (``2026-11-28``; ``2025-03`` for a month; ``--11-28`` without a year).
- A unit qualifies its number: two numbers match when their values are equal and their units are equal
  or one has none. ``$1,200`` matches a bare ``1200`` (the amount is the fact), not ``€1,200``.
- Passes run from the most to the least specific (citations, dates, numbers, names) and blank out what
  they took, so the parts of ``O.C.G.A. 34-9-261`` or ``28 November 2026`` are not numbers as well.
- A number glued to a letter or to a word and hyphen (``A100``, ``step-2``, ``3090Ti``) is an identifier,
  not a fact; so are times and fractions (``10:30``, ``3/4``). A bare year (``2027``) is a number;
  ``3rd`` is ``number 3 ordinal``.
  ``11/28/2026`` is month first unless the first part is over 12. European grouping is read where it is
  unambiguous (``€1.200,50``, ``1.200.000``); ``1.200`` is 1.2 and ``1,5`` is not a number.
- Names are runs of capitalised words one space apart, less a stop-list of common capitalised words
  (``The``, ``Summary``, months, labels such as ``Client``). One word alone counts after a title
  (``Dr. Lee`` is ``Lee``) or mid-sentence, not at the start of a sentence, line or label (``Next``,
  ``Goals:``), except in a source (``extract(..., source=True)``): evidence may back more than an answer
  asserts. A word with a digit is an identifier (``A100``). Names match on words, case-blind: ``Walsh``
  and ``Samuel Walsh`` match (one's words are all in the other), ``Samuel Costa`` does not.
- Facts are a set: a fact repeated in one text counts once.

Scores (``corpus_scores``), 0-100, micro-averaged over facts rather than over outputs:

- fact precision = output facts that the output's prompt or reference supports / all output facts;
- fact recall = reference facts that the output reproduces / all reference facts.

An output with no facts adds nothing to precision and misses all of its reference's facts in recall. A
side with no facts at all (0/0) scores 0: nothing checkable was said, so nothing earns credit.

Limits: English only; spelled-out numbers (``five``), lower-case name particles (``van``), an answer's
one-word name at a sentence start (``Walsh agreed.``), relative dates (``next Tuesday``) and times are
not facts; a capitalised phrase that is not a name (``Income Fund``) is a name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from datetime import date
from decimal import Decimal
from typing import NamedTuple

KINDS = ("number", "date", "name", "citation")


class Fact(NamedTuple):
    """One checkable fact: ``kind`` (one of KINDS), the normalised ``value``, a number's ``unit``."""

    kind: str
    value: str
    unit: str = ""  # numbers only: a currency code, "%" or "ordinal"; "" for a bare number


class FactCounts(NamedTuple):
    """One output's facts against its sources: the numerators and denominators of both scores."""

    output: int  # facts in the output
    supported: int  # of those, supported by the prompt or the reference
    reference: int  # facts in the reference
    reproduced: int  # of those, found in the output

    @property
    def precision(self) -> float | None:
        return self.supported / self.output if self.output else None

    @property
    def recall(self) -> float | None:
        return self.reproduced / self.reference if self.reference else None


# --- citations ---------------------------------------------------------------------------------------
_SECTION = r"\d[\w.:-]*(?:\([\w.]+\))*"  # 34-9-261, 2601(a)(1)
_CODE_WORD = r"(?:(?:[A-Z]\.)+[A-Z]?|[A-Z][a-z]{1,5}\.|Code|Stat|Laws)"  # U.S.C., Cal., Code
_CITATIONS = [
    re.compile(rf"(?:\b\d+[ \t]+)?(?:{_CODE_WORD}[ \t]*){{0,5}}§§?[ \t]*{_SECTION}"),  # ... § 2601
    re.compile(rf"(?:\b\d+[ \t]+)?(?:[A-Z]\.){{2,}}(?:[ \t]*{_CODE_WORD})*[ \t]+{_SECTION}"),  # O.C.G.A. 34-9-261
    # 123 F.3d 456, 123 F. Supp. 2d 456 (a reporter's words are abbreviations, none of them a month: 5 May. 2026)
    re.compile(r"\b\d{1,4}[ \t]+(?:(?!May|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[A-Z][A-Za-z]{0,5}\.[ \t]?)+"
               r"(?:\d(?:d|st|nd|rd|th)[ \t]+)?\d{1,5}\b"),
]


def _citation(match: re.Match) -> Fact:
    return Fact("citation", " ".join(match.group().replace("§", " ").split()).rstrip(".:-"))


# --- dates -------------------------------------------------------------------------------------------
_MONTH_NAMES = ["January Jan", "February Feb", "March Mar", "April Apr", "May", "June Jun", "July Jul",
                "August Aug", "September Sept Sep", "October Oct", "November Nov", "December Dec"]
_MONTHS = {name: number for number, names in enumerate(_MONTH_NAMES, 1) for name in names.split()}
_MONTH = rf"(?P<month>{'|'.join(_MONTHS)})\b(?:(?<!May)\.)?"
_DAY = r"(?P<day>\d{1,2})(?:st|nd|rd|th)?"
_DATES = [
    re.compile(r"\b(?P<year>\d{4})-(?P<month>\d{1,2})-(?P<day>\d{1,2})\b"),
    re.compile(r"\b(?P<month>\d{1,2})/(?P<day>\d{1,2})/(?P<year>\d{4})\b"),
    re.compile(r"\b(?P<day>\d{1,2})\.(?P<month>\d{1,2})\.(?P<year>\d{4})\b"),
    re.compile(rf"\b{_DAY}[ \t]+(?:of[ \t]+)?{_MONTH},?[ \t]+(?P<year>\d{{4}})\b"),
    re.compile(rf"\b{_MONTH}[ \t]+{_DAY},?[ \t]+(?P<year>\d{{4}})\b"),
    re.compile(rf"\b{_MONTH},?[ \t]+(?P<year>\d{{4}})\b"),
    re.compile(rf"\b{_MONTH}[ \t]+{_DAY}\b"),
    re.compile(rf"\b{_DAY}[ \t]+(?:of[ \t]+)?{_MONTH}"),
]


def _date(match: re.Match) -> Fact | None:
    parts = match.groupdict()
    month = _MONTHS.get(parts["month"]) or int(parts["month"])
    day, year = int(parts.get("day") or 1), parts.get("year")
    if month > 12 and day <= 12 and "/" in match.group():  # 28/11/2026: day first after all
        month, day = day, month
    try:
        date(int(year or 2000), month, day)  # 2000: a leap year, so a yearless 29 February is valid
    except ValueError:
        return None  # not a calendar date: its digits are left to the number pass
    if not parts.get("day"):
        return Fact("date", f"{year}-{month:02d}")
    return Fact("date", f"{year}-{month:02d}-{day:02d}" if year else f"--{month:02d}-{day:02d}")


# --- numbers -----------------------------------------------------------------------------------------
_CURRENCIES = {"$": "USD", "US$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY", "dollar": "USD", "dollars": "USD",
               "euro": "EUR", "euros": "EUR"}
_SCALES = {"k": 3, "K": 3, "thousand": 3, "m": 6, "M": 6, "mn": 6, "million": 6, "B": 9, "bn": 9, "billion": 9, "trillion": 12}
_NUMBER = re.compile(r"""
    (?<![\w.,:/])(?<![^\W\d]-)                   # not inside a word, an identifier (step-2) or a larger number
    (?P<sign>[-−+])?
    (?:(?P<symbol>US\$|[$€£¥])|(?P<code>USD|EUR|GBP|JPY|CHF|CAD|AUD)[ \t]?)?
    (?P<minus>[-−])?
    (?P<digits>\d{1,3}(?:\.\d{3})+,\d+|\d{1,3}(?:\.\d{3}){2,}|\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)
    (?:(?P<short>[kKmMB]|bn|mn)|[ \t]+(?P<scale>thousand|million|billion|trillion))?
    (?:[ \t]?(?P<percent>%)|[ \t]+(?P<percent_word>percent|per[ \t]cent)|(?P<ordinal>st|nd|rd|th)
       |[ \t]+(?P<after>USD|EUR|GBP|JPY|CHF|CAD|AUD|dollars?|euros?))?
    (?!\w|[.,:/]\d)
""", re.VERBOSE)


def _number(match: re.Match) -> Fact:
    digits = match["digits"]
    if "," in digits and "." in digits and digits.index(".") < digits.index(","):  # 1.200,50
        digits = digits.replace(".", "").replace(",", ".")
    elif digits.count(".") > 1:  # 1.200.000
        digits = digits.replace(".", "")
    value = Decimal(digits.replace(",", "")).scaleb(_SCALES.get(match["short"] or match["scale"], 0))
    signs = (match["sign"] or "") + (match["minus"] or "")
    if "-" in signs or "−" in signs:
        value = -value
    text = format(value.normalize(), "f")
    currency = match["symbol"] or match["code"] or match["after"]
    unit = ("%" if match["percent"] or match["percent_word"] else "ordinal" if match["ordinal"]
            else _CURRENCIES.get(currency, currency or ""))
    return Fact("number", "0" if text == "-0" else text, unit)


# --- names -------------------------------------------------------------------------------------------
_TITLES = {"Dr", "Mr", "Mrs", "Ms", "Mx", "Prof", "Sir", "Dame", "Judge", "Justice", "Rev"}
_STOP = frozenset("""
    a an the this that these those it its i we you he she they me our my your his her their them
    in on at for to of and or but nor so if when while after before since until as by with from into per
    not no yes all any each every some many most more less few other such both either neither
    is are was were be been will would can could should may might must shall do does did has have had
    here there then now today tomorrow yesterday also however therefore thus meanwhile overall finally
    first second third next last please dear hello hi thanks thank regards sincerely best
    summary note notes client clients customer age risk cash holdings goals goal changes change step steps
    total report recommendation recommendations action actions result results status date name amount
    monday tuesday wednesday thursday friday saturday sunday
""".split()) | {name.casefold() for name in _MONTHS}
_WORD = re.compile(r"(?<![\w'’-])[^\W\d_][\w'’-]*")  # whole words only: not the Ti of 3090Ti
_JOIN = re.compile(r"[ \t]+")
_AFTER_TITLE = re.compile(r"\.?[ \t]+")
_BREAK = re.compile(r"[.!?:;\n]")


def _is_name_word(word: str) -> bool:
    return word[0].isupper() and word.casefold() not in _STOP and not any(c.isdigit() for c in word)


def _names(text: str, source: bool, where: list | None = None) -> set[Fact]:
    """Runs of capitalised words; see the module docstring for which runs are names."""
    found: set[Fact] = set()
    run: list[str] = []
    run_at_start = carried = False  # carried: the previous word is a capitalised stop word opening a sentence
    end = start = last = 0

    def flush() -> None:
        words = [w for w in run if w not in _TITLES]
        if words:
            words[-1] = re.sub(r"['’]s?$", "", words[-1])  # possessive: Walsh's -> Walsh
        if words and (len(words) > 1 or run[0] in _TITLES or ((source or not run_at_start) and len(words[0]) > 1)):
            found.add(Fact("name", " ".join(words)))
            if where is not None:
                where.append((Fact("name", " ".join(words)), start, last))

    for match in _WORD.finditer(text):
        word, gap = match.group(), text[end : match.start()]
        opens = not end or bool(_BREAK.search(gap)) or carried  # the word opens a sentence, line or label
        end = match.end()
        if run and _is_name_word(word) and (_JOIN.fullmatch(gap) or (run[-1] in _TITLES and _AFTER_TITLE.fullmatch(gap))):
            run.append(word)
            last = match.end()
            carried = False
            continue
        if run:
            flush()
            run = []
        if word in _TITLES or _is_name_word(word):
            run, run_at_start, start, last = [word], opens, match.start(), match.end()
        carried = opens and word[0].isupper() and not run  # "The Fed" at a sentence start: Fed opens it
    if run:
        flush()
    return found


# --- the API -----------------------------------------------------------------------------------------
def _take(patterns: list[re.Pattern], text: str, make: Callable[[re.Match], Fact | None], found: set[Fact],
          where: list | None = None) -> str:
    """Add each match's fact to ``found`` and blank the match out of the text for the later passes (so
    positions stay those of the original text)."""
    def take(match: re.Match) -> str:
        fact = make(match)
        if fact is None:
            return match.group()
        found.add(fact)
        if where is not None:
            where.append((fact, match.start(), match.end()))
        return " " * len(match.group())

    for pattern in patterns:
        text = pattern.sub(take, text)
    return text


def extract(text: str, *, source: bool = False) -> set[Fact]:
    """Every fact in ``text``: citations, dates, numbers and names, normalised (an empty set for "").

    ``source=True`` reads the text as evidence: a single capitalised word opening a sentence or label is
    then a name as well (``Holdings: US index fund`` backs an answer's ``the US index fund``).
    """
    found: set[Fact] = set()
    text = _take(_CITATIONS, text, _citation, found)
    text = _take(_DATES, text, _date, found)
    text = _take([_NUMBER], text, _number, found)
    return found | _names(text, source)


def located(text: str, *, source: bool = False) -> list[tuple[Fact, int, int]]:
    """Every fact of ``text`` (as ``extract`` finds them) with where it is stated: ``(fact, start, end)``
    for each occurrence, in text order; ``text[start:end]`` is the span a report highlights."""
    where: list[tuple[Fact, int, int]] = []
    found: set[Fact] = set()
    original = text
    text = _take(_CITATIONS, text, _citation, found, where)
    text = _take(_DATES, text, _date, found, where)
    text = _take([_NUMBER], text, _number, found, where)
    _names(text, source, where)
    assert len(text) == len(original)
    return sorted(where, key=lambda item: item[1])


def matches(a: Fact, b: Fact) -> bool:
    """Whether two facts state the same thing: same kind, and the value rules in the module docstring."""
    if a.kind != b.kind:
        return False
    if a.kind == "name":
        x, y = set(a.value.casefold().split()), set(b.value.casefold().split())
        return x <= y or y <= x
    if a.kind == "number":
        return a.value == b.value and (a.unit == b.unit or not a.unit or not b.unit)
    return a.value.casefold() == b.value.casefold()


def supported(fact: Fact, sources: Iterable[Fact]) -> bool:
    return any(matches(fact, source) for source in sources)


def unsupported(text: str, *sources: str) -> set[Fact]:
    """The facts of ``text`` that none of ``sources`` supports (a grounding check: what was made up)."""
    known = set().union(*(extract(s, source=True) for s in sources))
    return {fact for fact in extract(text) if not supported(fact, known)}


def score(output: str, reference: str, prompt: str = "") -> FactCounts:
    """One output's fact counts: precision against prompt and reference, recall of the reference."""
    said, expected = extract(output), extract(reference)
    support = extract(reference, source=True) | extract(prompt, source=True)
    return FactCounts(len(said), sum(supported(f, support) for f in said),
                      len(expected), sum(supported(f, said) for f in expected))


def corpus_scores(outputs: Sequence[str], references: Sequence[str], prompts: Sequence[str] | None = None) -> dict[str, float]:
    """``fact_precision`` and ``fact_recall`` on 0-100, micro-averaged over all facts (0 where 0/0)."""
    prompts = [""] * len(references) if prompts is None else prompts
    counts = [score(o, r, p) for o, r, p in zip(outputs, references, prompts, strict=True)]
    said, right = sum(c.output for c in counts), sum(c.supported for c in counts)
    expected, kept = sum(c.reference for c in counts), sum(c.reproduced for c in counts)
    return {"fact_precision": 100.0 * right / said if said else 0.0, "fact_recall": 100.0 * kept / expected if expected else 0.0}
