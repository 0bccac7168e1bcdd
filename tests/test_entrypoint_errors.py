"""Bad input to the training entrypoint: one clear line, exit code 2, no traceback, nothing trained."""

from __future__ import annotations

import json

import pytest

from entrypoints import train

GOOD = {"prompt": "Client Ann, age 30.", "completion": "Client: Ann. Age: 30."}


def run_main(root, capsys) -> tuple[int, str]:
    code = train.main(["--root", str(root)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.strip().splitlines()[-1]  # the last line; loading bars may precede it


def raw_job(make_job, lines: list[bytes]):
    root = make_job()
    (root / "input/data/train/train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return root


CASES = [
    ([json.dumps(GOOD).encode(), b'{"prompt": "x", "completion": '], r"train.jsonl:2: not valid JSON"),
    ([json.dumps({"prompt": "x"}).encode()], r"train.jsonl:1: missing field 'completion'"),
    ([json.dumps({"promt": "x", "completion": "y"}).encode()], r"train.jsonl:1: unknown field 'promt'.*Did you mean 'prompt'"),
    ([json.dumps({"input": "x", "output": "y"}).encode()], r"train.jsonl:1: no 'prompt'/'completion', 'messages' field"),
    ([json.dumps({"messages": [{"role": "usr", "content": "x"}, {"role": "assistant", "content": "y"}]}).encode()],
     r"train.jsonl:1: messages\[0\]: unknown role 'usr'.*Did you mean 'user'"),
    ([json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode()], r"train.jsonl:1: no assistant turn"),
    ([json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}, {"role": "user", "content": "z"}]}).encode()],
     r"the last turn is 'user'"),
    ([json.dumps({"prompt": "x", "completion": "   "}).encode()], r"train.jsonl:1: field 'completion' is empty"),
    ([json.dumps(GOOD).encode(), b'{"prompt": "caf\xe9", "completion": "y"}'], r"train.jsonl:2: not UTF-8 \(byte 0xe9"),
]


@pytest.mark.parametrize("lines,message", CASES)
def test_bad_data_line(make_job, capsys, lines, message):
    root = raw_job(make_job, lines)
    code, err = run_main(root, capsys)
    assert code == 2
    assert err.startswith("Error: ")
    import re

    assert re.search(message, err), err
    assert not (root / "model").exists() and not (root / "checkpoints").exists()
    assert (root / "output/failure").read_text().strip() == err.removeprefix("Error: ")


@pytest.mark.parametrize(
    "hp,message",
    [
        ({"learning_rat": "1e-4"}, "unknown key 'learning_rat'. Did you mean 'learning_rate'"),
        ({"learning_rate": "-0.1"}, "'learning_rate' = '-0.1' is not valid: Input should be greater than 0"),
        ({"lora_r": "0"}, "'lora_r' = '0' is not valid: Input should be greater than 0"),
        ({"method": "qlorra"}, "'method' = 'qlorra' is not valid"),
        ({"hf_token": "hf_secret"}, "unknown key 'hf_token'"),  # tokens never travel as hyperparameters
    ],
)
def test_bad_hyperparameter(make_job, capsys, hp, message):
    root = make_job(hp=hp)
    code, err = run_main(root, capsys)
    assert code == 2 and message in err
    assert not (root / "model").exists()


def test_missing_train_channel(make_job, capsys):
    root = make_job()
    import shutil

    shutil.rmtree(root / "input/data/train")
    code, err = run_main(root, capsys)
    assert code == 2 and "no 'train' data channel" in err


def test_empty_train_folder(make_job, capsys):
    root = make_job()
    (root / "input/data/train/train.jsonl").unlink()
    code, err = run_main(root, capsys)
    assert code == 2 and "holds no *.jsonl files" in err


def test_too_many_fully_truncated_examples_abort(make_job, capsys):
    long = [{"prompt": "many words " * 60, "completion": "short"}] * 10 + [GOOD] * 10
    root = make_job(train=long, eval=[GOOD], hp={"max_seq_len": "32"})
    code, err = run_main(root, capsys)
    assert code == 2
    assert "10 of 20 training examples (50.0%) lose their whole answer to truncation at max_seq_len=32 (limit 5%)" in err
    assert "To fix: raise max_seq_len above" in err


def test_base_model_folder_missing(make_job, capsys, tmp_path):
    root = make_job(hp={"base_model": str(tmp_path / "nope")})
    code, err = run_main(root, capsys)
    assert code == 2 and "does not exist" in err
