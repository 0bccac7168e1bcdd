"""What a new user reads: one line for a missing file, a fix in every error, a did-you-mean for a typo,
plan's arithmetic as it is done, whole sentences."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from launcher.cli.main import app

runner = CliRunner()
LLAMA3_8B = "meta-llama/Meta-Llama-3-8B"


def invoke(*args: str):
    return runner.invoke(app, list(map(str, args)), catch_exceptions=False)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def one_line(text: str) -> str:
    """Terminal output with Rich's wrapping and table borders undone."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_validate_of_a_missing_file_prints_only_the_error(tmp_path):
    missing = tmp_path / "nope.jsonl"
    result = invoke("validate", missing)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"Error: dataset '{missing}' does not exist. To fix: check the path\n"
    # The same for a spec whose eval file is missing: no table of the train set first.
    train = tmp_path / "train.jsonl"
    train.write_text('{"prompt": "a?", "completion": "b."}\n')
    spec = write(tmp_path / "job.yaml", f"name: a\ndata: {{train: {train}, eval: {tmp_path / 'eval.jsonl'}}}\n")
    result = invoke("validate", spec)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"Error: dataset '{tmp_path / 'eval.jsonl'}' does not exist. To fix: check the path\n"


@pytest.mark.parametrize(
    "line",
    [
        {"prompt": "a?", "completion": ["b"]},
        {"messages": []},
        {"messages": ["hi"]},
        {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "assistant", "content": "b"}]},
    ],
)
def test_every_bad_line_says_how_to_fix_it(tmp_path, line):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(line) + "\n")
    result = invoke("validate", path)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {path}:1: ") and "To fix: " in result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("command", ["validate", "plan", "train"])
@pytest.mark.parametrize("typo", ["H1OO", "h1oo", "A1OG"])
def test_an_accelerator_typo_gets_a_did_you_mean(tmp_path, command, typo):
    train = tmp_path / "train.jsonl"
    train.write_text('{"prompt": "a?", "completion": "b."}\n')
    spec = write(tmp_path / "job.yaml", f"name: a\ndata: {{train: {train}}}\ncompute: {{accelerator: '{typo}:1'}}\n")
    result = invoke(command, spec)
    assert result.exit_code == 2
    expected = {"H1OO": "H100", "h1oo": "H100", "A1OG": "A10G"}[typo]
    assert f"unknown GPU kind '{typo}'. Did you mean '{expected}'?" in result.stderr
    assert "To fix:" in result.stderr and len(result.stderr.splitlines()) == 1


def plan_text(tmp_path: Path, training: str, accelerator: str = "H100:1", base_model: str = LLAMA3_8B) -> str:
    spec = write(tmp_path / "job.yaml", f"""\
        name: a
        base_model: {base_model}
        data: {{train: s3://bucket/train.jsonl}}
        training: {{{training}}}
        compute: {{accelerator: '{accelerator}'}}
        """)
    result = invoke("plan", spec, "--tokens", "1000000")
    assert result.exit_code == 0, result.output
    return one_line(result.stdout)


def test_plan_shows_the_micro_batch_arithmetic_it_does(tmp_path):
    # The GPU fast path (the default) plans one max_seq_len example per micro-batch, whatever micro_batch_size says.
    text = plan_text(tmp_path, "micro_batch_size: 8, max_seq_len: 1024, gradient_accumulation_steps: 4")
    rows, seq, tokens = map(lambda s: int(s.replace(",", "")), re.search(r"(\d+) example x max_seq_len (\d+) = ([\d,]+) tokens per micro-batch", text).groups())
    assert rows * seq == tokens == 1024
    assert "micro_batch_size 8 x gradient_accumulation_steps 4 = 32 rows" in text
    assert "micro_batch_size 8 x max_seq_len 1024 = 1,024" not in text
    # The standard path plans the micro-batch the spec asks for.
    text = plan_text(tmp_path, "micro_batch_size: 8, max_seq_len: 1024, fast_path: 'off'")
    assert "micro_batch_size 8 x max_seq_len 1024 = 8,192 tokens per micro-batch" in text


def test_a_fit_refusal_names_the_micro_batch_it_planned(tmp_path):
    text = plan_text(tmp_path, "micro_batch_size: 8", accelerator="A10G:1", base_model="meta-llama/Llama-3.1-70B")
    assert "the requested A10G:1 does not fit" in text
    assert "micro_batch_size 1" not in text  # the spec says 8
    assert "one max_seq_len 1024 example per micro-batch: the GPU fast path sizes its micro-batches itself, micro_batch_size 8" in text
    text = plan_text(tmp_path, "micro_batch_size: 8, fast_path: 'off'", accelerator="A10G:1", base_model="meta-llama/Llama-3.1-70B")
    assert "micro_batch_size 8 x max_seq_len 1024 tokens per micro-batch). To fix:" in text


def test_plan_of_a_model_it_cannot_reach_says_so_in_one_whole_sentence(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"prompt": "a?", "completion": "b."}\n')
    spec = write(tmp_path / "job.yaml", f"name: a\nbase_model: {LLAMA3_8B}\ndata: {{train: {train}}}\n")
    result = invoke("plan", spec)
    assert result.exit_code == 0, result.output
    expected = (f"characters / 4 because {LLAMA3_8B}'s tokenizer is not in the local Hugging Face cache, and plan never "
                f"downloads (huggingface-cli download {LLAMA3_8B} counts exactly, as does --tokens N)")
    assert expected in one_line(result.stdout)
    assert expected in json.loads(invoke("plan", spec, "--json").stdout)["dataset"]["note"]
