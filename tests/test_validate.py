"""``launcher validate`` on a corpus of broken files (tests/data/), one test per problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from launcher.cli.main import app
from launcher.data import load_examples, validate_dataset

DATA = Path(__file__).parent / "data"
runner = CliRunner()


def validate(*args: str):
    return runner.invoke(app, ["validate", *map(str, args)], catch_exceptions=False)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("malformed_json", "3: not valid JSON (Expecting ',' delimiter at column 81). To fix: correct or remove the line"),
        ("missing_field", "3: missing field 'completion'. To fix: add it"),
        (
            "wrong_field",
            "3: unknown field 'completoin' in a prompt_completion example. Did you mean 'completion'? "
            "To fix: use only completion, id, metadata, prompt",
        ),
        ("wrong_type", "3: field 'completion' must be a string, got list. To fix: write it as one JSON string"),
        (
            "unknown_role",
            "3: messages[1]: unknown role 'assistent'. Did you mean 'assistant'? To fix: use one of system, user, assistant",
        ),
        (
            "no_assistant",
            "3: no assistant turn, so there is nothing to learn. To fix: add the expected answer as an assistant message",
        ),
        (
            "assistant_not_last",
            "3: the last turn is 'user'; an example must end with an assistant turn. To fix: add the answer or drop the turn",
        ),
        ("empty_completion", "3: field 'completion' is empty. To fix: fill it in or remove the line"),
        ("non_utf8", "3: not UTF-8 (byte 0xe9 at column 41). To fix: re-encode the file as UTF-8"),
        (
            "mixed_formats",
            "3: this line is in messages format but line 1 is in prompt_completion format. To fix: use one format per file",
        ),
    ],
)
def test_invalid_line_exits_2_with_file_and_line(name, message):
    path = DATA / f"{name}.jsonl"
    result = validate(path)
    assert result.exit_code == 2
    assert result.stderr == f"Error: {path}:{message}\n"


def test_empty_file():
    path = DATA / "empty.jsonl"
    result = validate(path)
    assert result.exit_code == 2
    assert result.stderr == f"Error: {path}: the dataset holds no examples. To fix: add JSONL lines, one example a line\n"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    result = validate(path)
    assert result.exit_code == 2
    assert result.stderr == f"Error: dataset '{path}' does not exist. To fix: check the path\n"


def test_duplicates_are_a_warning_with_the_first_repeat():
    path = DATA / "duplicates.jsonl"
    result = validate(path, "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)["datasets"][0]
    assert report["examples"] == 5 and report["duplicates"] == 2
    assert (
        f"{path}:3: duplicate of line 1 (2 duplicate examples in all). "
        "To fix: remove the repeats, they weigh those examples double"
    ) in report["warnings"]


def test_near_empty_answer_is_a_warning():
    path = DATA / "near_empty.jsonl"
    report = json.loads(validate(path, "--json").stdout)["datasets"][0]
    assert report["near_empty"] == 1
    assert report["warnings"][0] == (
        f"{path}:3: near-empty example (1 in all have a prompt or answer with fewer than 3 letters or digits). "
        "To fix: fill them in or remove them"
    )


def test_eval_prompts_seen_in_train_are_reported():
    train, eval_ = DATA / "overlap_train.jsonl", DATA / "overlap_eval.jsonl"
    result = validate(train, "--eval", eval_, "--json")
    assert result.exit_code == 0
    reports = json.loads(result.stdout)["datasets"]
    assert [r["channel"] for r in reports] == ["train", "eval"]
    assert reports[1]["overlap_with_train"] == 1
    assert reports[1]["warnings"] == [
        f"{eval_}:2: the same prompt is in the training set at {train}:2 (1 of 2 eval examples overlap with train), "
        "so eval scores overstate the model. To fix: remove them from one of the two sets"
    ]


def test_small_dataset_warns_under_1000_examples():
    path = DATA / "overlap_train.jsonl"
    result = validate(path)
    assert result.exit_code == 0
    assert "only 2 training examples; about 1,000 are usually needed" in result.stdout


def test_every_invalid_line_is_listed_up_to_a_cap(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("".join('{"prompt": "q%d"}\n' % i for i in range(25)), encoding="utf-8")
    result = validate(path)
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"{path}:1: missing field 'completion'. To fix: add it"
    assert lines[19].startswith(f"{path}:20: ")
    assert lines[20] == "... and 5 more"
    assert lines[21] == (
        "Error: 25 problems in train (25), listed above. To fix: correct or remove those lines, then validate again"
    )


def test_job_spec_supplies_data_model_and_max_seq_len(tmp_path, tiny_llama_dir):
    spec = tmp_path / "job.yaml"
    spec.write_text(
        f"name: overlap\nbase_model: tiny-llama\ndata:\n  train: {DATA / 'overlap_train.jsonl'}\n"
        f"  eval: {DATA / 'overlap_eval.jsonl'}\ntraining:\n  max_seq_len: 20\n  max_new_tokens: 8\n",
        encoding="utf-8",
    )
    result = validate(spec, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["max_seq_len"] == 20
    assert payload["tokenizer"] == {"label": "tiny-llama tokenizer, chat-templated as training sees it", "exact": True}
    train = payload["datasets"][0]
    # Each conversation, rendered with tiny-llama's chat template, is longer than 20 tokens.
    assert train["over_max_seq_len"] == 2 and train["tokens"]["min"] > 20
    assert train["warnings"][0].startswith(f"{DATA / 'overlap_train.jsonl'}:1: ")
    assert "over max_seq_len 20 (2 of 2 examples will be truncated)" in train["warnings"][0]


def test_token_count_is_the_row_training_builds(tiny_llama_dir):
    from transformers import AutoTokenizer

    from entrypoints.sequences import tokenize
    from launcher.tokens import token_counter

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    counter = token_counter("tiny-llama")
    first = load_examples(DATA / "overlap_train.jsonl")[0]
    rendered = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in first.messages], tokenize=False)
    assert rendered.startswith("<s><|user|>\n") and rendered.rstrip().endswith("</s>")
    assert counter.count(first) == len(tokenizer(rendered, add_special_tokens=False).input_ids)
    assert counter.count(first) == len(tokenize(tokenizer, first, max_seq_len=10_000))


def test_unreachable_tokenizer_falls_back_to_a_labelled_estimate():
    # HF_HUB_OFFLINE=1 in the tests: a Hub id that is not cached cannot be loaded.
    result = validate(DATA / "overlap_train.jsonl", "--base-model", "acme/not-a-cached-model", "--json")
    assert result.exit_code == 0
    tokenizer = json.loads(result.stdout)["tokenizer"]
    assert tokenizer["exact"] is False
    assert tokenizer["label"].startswith("ESTIMATED as characters/4 (tokenizer of 'acme/not-a-cached-model' not available")


def test_several_broken_datasets_are_all_reported(tmp_path):
    result = validate(DATA / "missing_field.jsonl", "--eval", DATA / "wrong_type.jsonl")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"{DATA / 'missing_field.jsonl'}:3: missing field 'completion'. To fix: add it",
        f"{DATA / 'wrong_type.jsonl'}:3: field 'completion' must be a string, got list. To fix: write it as one JSON string",
        "Error: 2 problems in train (1), eval (1), listed above. To fix: correct or remove those lines, then validate again",
    ]


def test_remote_dataset_is_not_read_here():
    (report,) = validate_dataset("s3://bucket/train.jsonl")
    assert report.ok and not report.checked
    assert "a remote dataset is not read here" in report.warnings[0]
