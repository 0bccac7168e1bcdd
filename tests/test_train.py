"""The training entrypoint end to end on the CPU with tiny-llama: outputs, quality lift, accumulation,
resume equivalence, QLoRA, merge, the forgetting guard."""

from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import summary_records, write_jsonl
from safetensors.torch import load_file

from entrypoints import platform, train
from launcher.spec import INTERRUPTED_EXIT_CODE, TrainConfig

pytestmark = pytest.mark.slow


def recipe_for(root, **overrides) -> train.Recipe:
    plat = platform.detect(["--root", str(root)])
    config = TrainConfig.from_mapping({**plat.hyperparameters, **overrides})
    return train.Recipe(plat, config)


def run(root, on_step=None):
    plat = platform.detect(["--root", str(root)])
    return train.run(plat, TrainConfig.from_mapping(plat.hyperparameters), on_step=on_step, install_signals=on_step is not None)


def test_finished_job_writes_adapter_metrics_manifest_and_samples(finished_job):
    model_dir = finished_job / "model"
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["schema"] == 1 and metrics["method"] == "lora"
    assert metrics["train"]["steps"] == len(metrics["loss_curve"]) > 0
    assert metrics["train"]["tokens_per_s"] > 0 and metrics["train"]["peak_memory_bytes"] > 0
    assert metrics["data"]["train_examples"] + metrics["data"]["eval_examples"] == 48  # seeded held-out split
    for side in ("base", "tuned"):
        assert set(metrics["quality"][side]) == {"rouge1", "rouge2", "rougeL", "bleu", "chrf", "fact_precision", "fact_recall"}
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["packages"]["peft"] and manifest["packages"]["transformers"]
    assert len(manifest["datasets"]["train"]["sha256"]) == 64
    assert manifest["config"]["lora_r"] == 8
    samples = [json.loads(line) for line in (model_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and {"prompt", "reference", "base", "tuned", "source"} <= set(samples[0])
    assert (model_dir / "adapter_model.safetensors").is_file() and (model_dir / "adapter_config.json").is_file()


def test_fine_tuning_lifts_rouge_l_over_the_base(finished_job):
    metrics = json.loads((finished_job / "model" / "metrics.json").read_text())
    assert metrics["eval"]["loss_tuned"] < metrics["eval"]["loss_base"]
    assert metrics["quality"]["tuned"]["rougeL"] > metrics["quality"]["base"]["rougeL"] + 10
    assert metrics["loss_curve"][-1]["loss"] < metrics["loss_curve"][0]["loss"]


def test_saved_adapter_reloads_onto_the_base(finished_job, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir))
    tuned = PeftModel.from_pretrained(base, str(finished_job / "model"))
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        with_adapter = tuned(input_ids=ids).logits
        with tuned.disable_adapter():
            without = tuned(input_ids=ids).logits
    assert not torch.allclose(with_adapter, without)


def _grads(recipe) -> list[torch.Tensor]:
    return [p.grad.clone() for p in recipe.model.parameters() if p.requires_grad]


def test_loss_is_normalised_over_target_tokens_across_accumulation(make_job):
    # Examples with very different answer lengths: a mean of per-micro-batch means would weight the
    # short answers' tokens far more than the long ones'.
    records = [{"prompt": f"Q{i}", "completion": "yes" if i % 2 else " ".join(["long answer"] * (5 + 3 * i))} for i in range(8)]
    recipe = recipe_for(make_job(train=records, eval=records[:2]), lora_dropout=0.0, packing=False)
    recipe.setup()
    with torch.no_grad():  # make every LoRA factor non-zero so all gradients are informative
        for p in recipe.model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    pad = recipe.tokenizer.pad_token_id
    rows = recipe.rows[:4]
    one_batch = [train.sequences.collate(rows, recipe.train_tokens, pad)]
    four_micro = [train.sequences.collate([r], recipe.train_tokens, pad) for r in rows]

    recipe.accumulate(one_batch)
    full = _grads(recipe)
    recipe.model.zero_grad()
    recipe.accumulate(four_micro)
    accumulated = _grads(recipe)
    for a, b in zip(full, accumulated):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)

    # The bug this guards against: averaging per-micro-batch means gives a different gradient.
    recipe.model.zero_grad()
    for batch in four_micro:
        loss_sum, n = recipe.forward(recipe.model, batch)
        (loss_sum / n / len(four_micro)).backward()
    naive = _grads(recipe)
    assert max((a - b).abs().max() for a, b in zip(full, naive)) > 1e-4


def _final_adapter(root):
    return load_file(str(root / "model" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, launcher_cache):
    root = tmp_path_factory.mktemp("reference")
    _layout(root)
    run(root)
    return _final_adapter(root)


RESUME_HP = {"epochs": "3", "checkpoint_every": "4", "keep_checkpoints": "20", "lora_dropout": "0.1", "eval_samples": "2", "max_new_tokens": "4",
             "gradient_accumulation_steps": "2", "micro_batch_size": "4"}


def _layout(root):
    from conftest import SMALL_HP

    write_jsonl(root / "input/data/train/train.jsonl", summary_records(40, seed=3))
    (root / "input/config").mkdir(parents=True, exist_ok=True)
    (root / "input/config/hyperparameters.json").write_text(json.dumps({**SMALL_HP, **RESUME_HP}))


@pytest.mark.parametrize("kill_at", [1, 3, 5, 8])
def test_run_killed_at_any_step_and_resumed_ends_with_the_same_adapter(tmp_path, uninterrupted, kill_at):
    root = tmp_path / "job"
    _layout(root)

    def sigterm_at(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGTERM)  # a spot interruption arrives during this step

    with pytest.raises(train.Interrupted):
        run(root, on_step=sigterm_at)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert not (root / "model" / "metrics.json").exists()
    assert (root / "checkpoints" / f"step-{kill_at:08d}").is_dir()  # saved at the step boundary
    run(root)
    resumed = _final_adapter(root)
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], atol=1e-5, rtol=0)


def test_hard_kill_resumes_from_the_last_complete_checkpoint(tmp_path, uninterrupted, capsys):
    """SIGKILL gives no warning: the run restarts from the newest complete checkpoint and ignores a
    half-written one."""
    root = tmp_path / "job"
    _layout(root)
    run(root)
    checkpoints = root / "checkpoints"
    names = sorted(p.name for p in checkpoints.iterdir())
    assert names[0] == "step-00000004" and len(names) >= 2
    # The kill: step 4's checkpoint is complete, step 8's local write was cut off half-way, and step
    # 12's folder came back from a file-by-file sync (S3, Cloud Storage FUSE) without its state file.
    for name in names[2:]:
        shutil.rmtree(checkpoints / name)
    os.rename(checkpoints / names[1], checkpoints / "step-00000012")
    (checkpoints / "step-00000012" / "state.pt").unlink()
    (checkpoints / "step-00000008.tmp-999").mkdir()
    (checkpoints / "step-00000008.tmp-999" / "adapter.safetensors").write_bytes(b"half")
    shutil.rmtree(root / "model")
    run(root)
    out = capsys.readouterr().out
    assert "checkpoint step-00000012 is incomplete (state.pt missing): skipped" in out and "resumed from step-00000004" in out
    resumed = _final_adapter(root)
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], atol=1e-5, rtol=0)
    assert not any(".tmp-" in p.name for p in checkpoints.iterdir())


def test_sigterm_to_the_process_checkpoints_and_exits_75_then_resumes(tmp_path):
    root = tmp_path / "job"
    _layout(root)
    hp_file = root / "input/config/hyperparameters.json"
    hp_file.write_text(json.dumps({**json.loads(hp_file.read_text()), "epochs": "12", "logging_steps": "1"}))
    proc = subprocess.Popen([sys.executable, "-m", "entrypoints.train", "--root", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("step 2/"):
            proc.send_signal(signal.SIGTERM)
            break
    out = line + proc.communicate(timeout=120)[0]
    assert proc.returncode == INTERRUPTED_EXIT_CODE, out
    assert "SIGTERM received" in out and "Traceback" not in out
    for noise in ("kernels-community", "is_gradient_checkpointing", "Loading weights"):  # libraries' clutter kept out of job logs
        assert noise not in out, noise
    stopped_at = int(sorted(p.name for p in (root / "checkpoints").iterdir())[-1].removeprefix("step-"))
    assert stopped_at >= 2 and not (root / "model" / "metrics.json").exists()
    metrics = run(root)  # the same command again resumes and finishes
    assert [point["step"] for point in metrics["loss_curve"]] == list(range(1, metrics["train"]["steps"] + 1))


def test_qlora_trains_on_the_cpu_with_nf4_weights(make_job):
    import bitsandbytes as bnb

    recipe = recipe_for(make_job(hp={"epochs": "1"}), method="qlora")
    recipe.setup()
    layers = [m for m in recipe.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.quant_type == "nf4" for m in layers)
    assert all(m.weight.quant_state.nested for m in layers)  # double quantisation
    # On a GPU its fast path would spend what launcher plan notes: the run reads the same shape off the
    # quantised model as plan reads from the model's folder.
    from entrypoints import fast, tiny_llama
    from launcher import memory, plan

    shape = plan.find_model(str(tiny_llama.materialize()))
    assert fast.memory_target(recipe.model, recipe.config, log=print) == memory.qlora_memory_target(shape, recipe.config) > 0
    # Evaluate first (the bitsandbytes CPU pitfall: a no-grad forward must not break later gradients).
    pad = recipe.tokenizer.pad_token_id
    batch = train.sequences.collate(recipe.rows[:4], recipe.train_tokens, pad)
    with torch.no_grad():
        before, n = recipe.forward(recipe.model, batch)
    recipe.train()
    with torch.no_grad():
        after, _ = recipe.forward(recipe.model, batch)
    assert after / n < before / n - 0.1
    assert recipe.loss_curve[-1]["loss"] < recipe.loss_curve[0]["loss"]


def test_merge_writes_weights_equal_to_base_plus_adapter(make_job):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root = make_job(hp={"epochs": "1", "merge": "true", "eval_samples": "1"})
    run(root)
    merged = AutoModelForCausalLM.from_pretrained(str(root / "model" / "merged"))
    from entrypoints import tiny_llama

    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama.materialize()))
    with_adapter = PeftModel.from_pretrained(base, str(root / "model"))
    ids = torch.tensor([[1, 7, 30, 99, 4]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, with_adapter(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
