"""The fact extractor and the fact precision/recall scores (``launcher.facts``) on strings a user would write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.facts import Fact, corpus_scores, extract, matches, score, unsupported

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "data"


def number(value: str, unit: str = "") -> Fact:
    return Fact("number", value, unit)


def name(value: str) -> Fact:
    return Fact("name", value)


# --- numbers and amounts ---------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["1,200", "1200", "1200.00", "1,200.0"])
def test_thousands_separators_and_trailing_zeros_are_one_number(text):
    assert extract(f"The fee is {text}.") == {number("1200")}


@pytest.mark.parametrize("text", ["$1,200.00", "$1,200", "USD 1,200", "1,200 USD", "1,200 dollars", "US$1200"])
def test_dollar_amounts_in_any_spelling_are_one_amount(text):
    assert extract(f"She sold {text} of stocks.") == {number("1200", "USD")}


def test_an_amount_matches_its_bare_number_but_not_another_currency():
    assert unsupported("She sold $1,200 of stocks.", "Sold: 1200") == set()
    assert unsupported("She sold €1,200 of stocks.", "Sold: $1,200") == {number("1200", "EUR")}
    assert unsupported("She sold $1,300 of stocks.", "Sold: $1,200") == {number("1300", "USD")}


@pytest.mark.parametrize("text", ["5%", "5 %", "5 percent", "5 per cent"])
def test_percent_spelled_out_is_the_same_percentage(text):
    assert extract(f"Fees rose {text} this year.") == {number("5", "%")}


@pytest.mark.parametrize(("text", "fact"), [
    ("1.5 million", number("1500000")),
    ("$2.3M", number("2300000", "USD")),
    ("£5m", number("5000000", "GBP")),
    ("30k", number("30000")),
    ("$2bn", number("2000000000", "USD")),
    ("10 thousand dollars", number("10000", "USD")),
])
def test_scaled_amounts_are_spelled_out(text, fact):
    assert extract(f"They hold {text} in bonds.") == {fact}


def test_negative_numbers_and_decimals():
    assert extract("Returns were -3.5% and −2 points; a ratio of 0.25.") == {number("-3.5", "%"), number("-2"), number("0.25")}
    assert matches(number("-3.5", "%"), number("3.5", "%")) is False


def test_numbers_inside_identifiers_are_not_facts():
    assert extract("Trained on an A100 at step-2 with a 3090Ti and H100s, 30km away.") == set()


def test_a_range_is_two_numbers_not_a_negative_one():
    assert extract("Between 2020-2025 it grew.") == {number("2020"), number("2025")}


def test_ordinals_are_numbers_marked_as_ordinals():
    assert extract("The 3rd payment and the 21st.") == {number("3", "ordinal"), number("21", "ordinal")}


@pytest.mark.parametrize(("text", "facts"), [
    ("€1.200,50", {number("1200.5", "EUR")}),  # European grouping with a decimal comma: unambiguous
    ("1.200.000", {number("1200000")}),
    ("1.200", {number("1.2")}),  # ambiguous: read the English way
    ("1,5", set()),  # ambiguous decimal comma: not a fact rather than a wrong one
    ("10:30", set()),
])
def test_european_formats_are_read_where_unambiguous(text, facts):
    assert extract(f"Paid {text} today") == facts


# --- dates -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "2026-11-28", "11/28/2026", "28/11/2026", "28.11.2026", "28 November 2026", "28th of November 2026",
    "November 28, 2026", "November 28th, 2026", "Nov 28 2026", "Nov. 28, 2026",
])
def test_every_date_format_is_one_date_and_no_numbers(text):
    assert extract(f"The review is due on {text}.") == {Fact("date", "2026-11-28")}


def test_month_and_year_and_yearless_dates():
    assert extract("Since March 2025, and again on 5 May.") == {Fact("date", "2025-03"), Fact("date", "--05-05")}


def test_a_bare_year_is_a_number():
    assert extract("Goals: fund university costs from 2027.") == {number("2027")}


def test_an_impossible_date_is_not_a_date():
    assert not any(f.kind == "date" for f in extract("Due 2026-02-30."))


# --- names -------------------------------------------------------------------------------------------
def test_names_after_labels_and_in_the_summary_line():
    assert extract("Summary for Samuel Walsh, 48, conservative risk.") == {name("Samuel Walsh"), number("48")}
    assert extract("Client: Victor Okafor\nAge: 63\nRisk: aggressive") == {name("Victor Okafor"), number("63")}


def test_sentence_initial_words_are_not_names():
    assert extract("Next step: keep capital safe. The plan holds. Summary: Holdings are fine.\nGoals: retire.") == set()
    assert extract("Walsh agreed.") == set()  # one word at a sentence start reads as an ordinary word


def test_titles_and_single_names_mid_sentence():
    assert extract("Dr. Lee met Mr Okafor and we called Walsh's office.") == {name("Lee"), name("Okafor"), name("Walsh")}


def test_a_surname_matches_the_full_name_but_another_person_does_not():
    assert unsupported("We spoke to Walsh.", "Client: Samuel Walsh") == set()
    assert unsupported("Summary for Samuel Costa.", "Client: Samuel Walsh") == {name("Samuel Costa")}
    assert unsupported("SUMMARY FOR SAMUEL WALSH", "Client: Samuel Walsh") == set()  # case-blind


def test_a_prompt_backs_a_name_it_opens_a_line_with():
    # "US" opens a label in the prompt; mid-sentence in the answer it is a name, and the prompt backs it.
    assert name("US") in extract("Holdings: growth fund, US index fund $379,000")
    assert unsupported("Holdings: growth fund, US index fund $379,000", "Holdings: US index fund $379,000") == set()


# --- citations ---------------------------------------------------------------------------------------
def test_statute_citations_with_or_without_the_section_sign_are_one_fact():
    assert extract("Under O.C.G.A. 34-9-261 and O.C.G.A. § 34-9-261.") == {Fact("citation", "O.C.G.A. 34-9-261")}


def test_federal_state_and_case_citations():
    assert extract("See 29 U.S.C. § 2601(a)(1), Cal. Lab. Code § 3600 and 123 F.3d 456.") == {
        Fact("citation", "29 U.S.C. 2601(a)(1)"), Fact("citation", "Cal. Lab. Code 3600"), Fact("citation", "123 F.3d 456"),
    }
    assert unsupported("Under O.C.G.A. § 34-9-262.", "O.C.G.A. 34-9-261") == {Fact("citation", "O.C.G.A. 34-9-262")}


# --- scores ------------------------------------------------------------------------------------------
def test_empty_texts_score_zero_without_dividing_by_zero():
    assert extract("") == set()
    counts = score("", "", "")
    assert counts == (0, 0, 0, 0) and counts.precision is None and counts.recall is None
    assert corpus_scores([], []) == {"fact_precision": 0.0, "fact_recall": 0.0}
    assert corpus_scores(["Fine."], ["Good."]) == {"fact_precision": 0.0, "fact_recall": 0.0}


def test_corpus_scores_are_micro_averaged_and_a_fact_free_answer_only_costs_recall():
    outputs = ["I cannot say.", "Anna Kim holds $5,000 and $9,000."]
    references = ["Samuel Walsh holds $3,000 and $4,000 since 2027.", "Anna Kim holds $5,000."]
    # Output 1 states nothing: precision unchanged, its 4 reference facts missed. Output 2: 2 of its 3
    # facts backed, both reference facts kept. Over facts: recall 2/6 (over outputs it would be 50).
    assert corpus_scores(outputs, references) == {"fact_precision": pytest.approx(200 / 3), "fact_recall": pytest.approx(100 / 3)}


def test_precision_counts_facts_the_prompt_backs():
    prompt, reference, output = "Client: Anna Kim\nAge: 48", "Summary for Anna Kim.", "Summary for Anna Kim, 48."
    assert corpus_scores([output], [reference]) == {"fact_precision": 50.0, "fact_recall": 100.0}
    assert corpus_scores([output], [reference], [prompt]) == {"fact_precision": 100.0, "fact_recall": 100.0}


def test_a_wrong_name_amount_and_year_on_real_data_score_lower():
    record = json.loads((EXAMPLES / "train.jsonl").read_text(encoding="utf-8").splitlines()[0])["messages"]
    prompt, reference = "\n".join(m["content"] for m in record[:-1]), record[-1]["content"]
    assert "Samuel Walsh" in reference and "$34,000" in reference and "2027" in reference
    wrong = reference.replace("Samuel Walsh", "Samuel Costa").replace("$34,000", "$43,000").replace("2027", "2029")
    right_scores, wrong_scores = corpus_scores([reference], [reference], [prompt]), corpus_scores([wrong], [reference], [prompt])
    assert right_scores == {"fact_precision": 100.0, "fact_recall": 100.0}
    assert wrong_scores["fact_precision"] < 100.0 and wrong_scores["fact_recall"] < 100.0
    # 6 facts (name, age, three amounts, year); 3 of them wrong.
    assert wrong_scores == {"fact_precision": 50.0, "fact_recall": 50.0}
    assert unsupported(wrong, prompt) == {name("Samuel Costa"), number("43000", "USD"), number("2029")}
