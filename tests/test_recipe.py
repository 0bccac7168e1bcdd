"""The training recipe's correctness: what the cloud jobs will rely on, each behaviour checked on the CPU
with tiny-llama (and tiny Gemma-2 / Mistral shapes built from configs)."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter

import pytest
import torch
from conftest import summary_records

from entrypoints import evaluate, platform, sequences, train
from launcher.spec import TrainConfig

pytestmark = pytest.mark.slow


def recipe_for(root, **overrides) -> train.Recipe:
    plat = platform.detect(["--root", str(root)])
    return train.Recipe(plat, TrainConfig.from_mapping({**plat.hyperparameters, **overrides}))


def run(root, on_step=None, install_signals=False):
    plat = platform.detect(["--root", str(root)])
    return train.run(plat, TrainConfig.from_mapping(plat.hyperparameters), on_step=on_step, install_signals=install_signals)


def sigterm_at(kill_at: int):
    def on_step(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGTERM)

    return on_step


@pytest.fixture
def restore_sigterm():
    yield
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


# --- gradient checkpointing -------------------------------------------------------------------------
def count_checkpoint_calls(recipe) -> Counter:
    """Wrap every decoder layer's checkpoint function, counting calls per layer."""
    calls: Counter = Counter()
    for index, layer in enumerate(recipe.decoder_layers()):
        inner = layer._gradient_checkpointing_func

        def counted(*args, _inner=inner, _index=index, **kwargs):
            calls[_index] += 1
            return _inner(*args, **kwargs)

        layer._gradient_checkpointing_func = counted
    return calls


def test_gradient_checkpointing_on_recomputes_every_layer_in_every_training_step(make_job):
    recipe = recipe_for(make_job(hp={"epochs": "1"}), gradient_checkpointing="on")
    recipe.setup()
    calls = count_checkpoint_calls(recipe)
    recipe.train()
    micro_batches = recipe.total_steps * recipe.config.gradient_accumulation_steps
    layers = len(recipe.decoder_layers())
    assert set(calls) == set(range(layers)), calls
    assert all(count >= micro_batches for count in calls.values()), (calls, micro_batches)


# --- the spec decides the optimizer step --------------------------------------------------------------
def test_the_spec_decides_every_optimizer_step_on_both_paths(make_job):
    """GPU memory may only decide how a step is split into micro-batches, never which examples a step
    holds: the same spec makes the same steps with the same examples on the standard and fast paths."""
    root = make_job(hp={"micro_batch_size": "4", "gradient_accumulation_steps": "2", "epochs": "2"})
    standard = recipe_for(root)
    standard.setup()
    quick = recipe_for(root, fast_path="on", micro_batch_tokens="256")
    quick.setup()
    assert not standard.fast and quick.fast
    assert quick.total_steps == standard.total_steps
    split = False
    for epoch in (0, 1):
        steps = [sorted(i for batch in w for row in batch for i in row) for w in standard.epoch_windows(epoch)]
        fast_windows = quick.epoch_windows(epoch)
        assert [sorted(i for batch in w for row in batch for i in row) for w in fast_windows] == steps
        for window in fast_windows:  # one row a micro-batch, within the budget
            assert all(len(batch) == 1 and sum(len(quick.train_tokens[i]) for i in batch[0]) <= 256 for batch in window)
            split |= len(window) > 1
    assert split  # the budget really split some steps


# --- checkpoints --------------------------------------------------------------------------------------
def test_final_checkpoint_is_written_once_and_metrics_count_the_epochs_trained(make_job, capsys):
    metrics = run(make_job(hp={"max_steps": "5", "checkpoint_every": "5", "eval_samples": "1"}))
    out = capsys.readouterr().out
    assert out.count("checkpoint step-00000005") == 1, out
    trained = metrics["train"]
    assert trained["steps"] == 5 and trained["max_steps"] == 5
    assert trained["epochs"] == pytest.approx(5 / recipe_steps_per_epoch(metrics), abs=1e-3) and trained["epochs"] < 2


def recipe_steps_per_epoch(metrics) -> int:
    import math

    return math.ceil(metrics["data"]["packed_rows"] / (8 * 1))  # SMALL_HP: micro-batch 8, no accumulation


def test_resume_refuses_a_changed_config_or_dataset_naming_new_run(make_job, capsys, restore_sigterm):
    root = make_job(hp={"epochs": "3"})
    with pytest.raises(train.Interrupted):
        run(root, on_step=sigterm_at(2), install_signals=True)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    hp_file = root / "input/config/hyperparameters.json"
    original = json.loads(hp_file.read_text())

    hp_file.write_text(json.dumps({**original, "learning_rate": "0.003"}))
    assert train.main(["--root", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "learning_rate 0.01 -> 0.003" in err and "--new-run" in err, err

    hp_file.write_text(json.dumps(original))
    data = root / "input/data/train/train.jsonl"
    data.write_text(data.read_text() + json.dumps(summary_records(1, seed=99)[0]) + "\n")
    assert train.main(["--root", str(root)]) == 2
    assert "the train data's content" in capsys.readouterr().err
    assert not (root / "model" / "metrics.json").exists()

    # What only changes how the run is scored (not what it trains) may change on resume.
    data.write_text("".join(data.read_text().splitlines(keepends=True)[:-1]))
    hp_file.write_text(json.dumps({**original, "eval_samples": "2"}))
    assert train.main(["--root", str(root)]) == 0
    assert "resumed from step-00000002" in capsys.readouterr().out


# --- evaluation ---------------------------------------------------------------------------------------
def test_a_missing_evaluation_package_fails_before_training(make_job, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rouge_score", None)  # as if the image lacked it
    root = make_job()
    assert train.main(["--root", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "'rouge_score'" in err and 'pip install "launcher[train]"' in err
    assert not (root / "checkpoints").exists() and not (root / "model").exists()


def test_a_failed_evaluation_keeps_the_trained_adapter(make_job, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("scorer crashed")

    monkeypatch.setattr(evaluate, "text_metrics", broken)
    root = make_job(hp={"epochs": "1"})
    assert train.main(["--root", str(root)]) == 1
    assert (root / "model/adapter_model.safetensors").is_file() and (root / "model/adapter_config.json").is_file()
    assert not (root / "model/metrics.json").exists()  # not done: metrics.json is what marks it done


def test_evaluation_prompts_are_whole_as_training_and_serving_see_them(make_job, monkeypatch):
    """No prompt is cut from the left (which dropped BOS and the system prompt)."""
    system = "Provide the client summary report based only on the given facts, in the house style of the firm."
    records = [{"messages": [{"role": "system", "content": system}, {"role": "user", "content": r["prompt"]},
                             {"role": "assistant", "content": r["completion"]}]} for r in summary_records(48)]
    seen = []
    real = evaluate.generate

    def spy(model, tokenizer, prompts, **kwargs):
        seen.extend(prompts)
        return real(model, tokenizer, prompts, **kwargs)

    monkeypatch.setattr(evaluate, "generate", spy)
    root = make_job(train=records, hp={"epochs": "1", "max_seq_len": "112", "max_new_tokens": "60", "eval_samples": "4"})
    recipe = recipe_for(root)
    recipe.setup()
    recipe.evaluate()
    bos = recipe.tokenizer.bos_token_id
    assert seen and all(p[0] == bos for p in seen)
    assert max(len(p) for p in seen) > 112 - 60  # longer than the old budget: it would have been cut
    scored = {tuple(sequences.prompt_ids(recipe.tokenizer, e)) for e in recipe.eval_examples}
    assert all(tuple(p) in scored for p in seen)
    system_ids = recipe.tokenizer(system, add_special_tokens=False)["input_ids"]
    assert all(recipe.tokenizer.decode(p).count(system) == 1 for p in seen), system_ids


def test_sigterm_during_generation_stops_before_the_next_batch(make_job, monkeypatch, restore_sigterm):
    from peft import PeftModelForCausalLM

    calls = []
    real = PeftModelForCausalLM.generate

    def generate(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # the spot notice arrives during the first batch
        return real(self, *args, **kwargs)

    monkeypatch.setattr(PeftModelForCausalLM, "generate", generate)
    root = make_job(eval=summary_records(24, seed=5), hp={"epochs": "1", "eval_samples": "24"})
    with pytest.raises(train.Interrupted, match="evaluation"):
        run(root, install_signals=True)
    assert len(calls) == 1  # 3 batches of 8 were due
    assert (root / "model/adapter_model.safetensors").is_file()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    monkeypatch.setattr(PeftModelForCausalLM, "generate", real)
    metrics = run(root)  # resumes at the finished step and only evaluates
    assert metrics["quality"]["samples_scored"] == 24
    assert [p["step"] for p in metrics["loss_curve"]] == list(range(1, metrics["train"]["steps"] + 1))


def test_the_forgetting_guard_warns_when_general_perplexity_rises_past_the_threshold(make_job, capsys):
    general = [{"text": f"The market report for week {i} shows stable bond yields and steady growth."} for i in range(20)]
    # A high learning rate on the summary task, no general text in training: general perplexity rises.
    metrics = run(make_job(general=general, hp={"epochs": "1", "forgetting_threshold_pct": "1"}))
    forgetting = metrics["forgetting"]
    assert forgetting["general_ppl_tuned"] > forgetting["general_ppl_base"] * 1.01
    assert forgetting["warning"] is True and "WARNING: catastrophic forgetting" in capsys.readouterr().out
    # The same rise under a threshold above it: no warning.
    quiet = run(make_job(general=general, hp={"epochs": "1", "forgetting_threshold_pct": str(forgetting["rise_pct"] + 50)},
                         name="quiet"))
    assert quiet["forgetting"]["rise_pct"] == pytest.approx(forgetting["rise_pct"], rel=1e-6)
    assert quiet["forgetting"]["warning"] is False and "catastrophic forgetting" not in capsys.readouterr().out


# --- the fast path against peft's own layers ------------------------------------------------------------
def fast_and_peft(root, **overrides):
    """Loss and gradients of one batch on the fast path (fused adapters, fused loss) and on the standard
    path (peft's own layers, the model's own logits), with the same non-zero LoRA weights."""
    results = []
    for fast_path in ("on", "off"):
        recipe = recipe_for(root, fast_path=fast_path, micro_batch_tokens="256", lora_dropout="0.0", **overrides)
        recipe.setup()
        generator = torch.Generator().manual_seed(0)
        for name, p in sorted(recipe.model.named_parameters()):
            if p.requires_grad:
                with torch.no_grad():
                    p.copy_(0.05 * torch.randn(p.shape, generator=generator))
        batch = sequences.collate(recipe.rows[:2], recipe.train_tokens, recipe.tokenizer.pad_token_id, multiple=128)
        recipe.model.zero_grad()
        loss_sum, _ = recipe.forward(recipe.model, batch)
        loss_sum.backward()
        results.append((recipe, loss_sum.detach(), {n: p.grad for n, p in recipe.model.named_parameters() if p.requires_grad}))
    (fast_recipe, fast_loss, fast_grads), (peft_recipe, peft_loss, peft_grads) = results
    from peft.tuners.lora import layer as lora_layer

    assert fast_recipe.fast and not peft_recipe.fast
    assert all(type(m).forward is lora_layer.Linear.forward for m in peft_recipe.model.modules() if type(m) is lora_layer.Linear)
    torch.testing.assert_close(fast_loss, peft_loss, rtol=1e-5, atol=1e-4)
    assert fast_grads.keys() == peft_grads.keys()
    for name in peft_grads:
        assert fast_grads[name] is not None and fast_grads[name].abs().sum() > 0, name
        error = float((fast_grads[name] - peft_grads[name]).norm() / peft_grads[name].norm())
        assert error < 1e-4, (name, error)  # float32 rounding apart (the fused GEMMs sum in another order)
    return fast_recipe


def test_fast_path_loss_and_gradients_equal_peft_and_the_models_own_logits(make_job):
    fast_and_peft(make_job())


def test_a_lora_on_lm_head_is_trained_on_the_fast_path(make_job):
    recipe = fast_and_peft(make_job(), target_modules="q_proj,v_proj,lm_head")
    assert any("lm_head" in n and "lora_B" in n for n, p in recipe.model.named_parameters() if p.requires_grad)


def save_model(folder, config):
    from transformers import AutoModelForCausalLM

    from entrypoints import tiny_llama

    tokenizer = tiny_llama.build_tokenizer()
    config.vocab_size, config.bos_token_id, config.eos_token_id, config.pad_token_id = (
        len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_gemma2_soft_capping_is_applied_on_the_fast_path(make_job, tmp_path):
    """Final-logit soft-capping in the fused loss, attention soft-capping in eager/Flex attention."""
    from transformers import Gemma2Config

    config = Gemma2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=16, final_logit_softcapping=2.0, attn_logit_softcapping=5.0, sliding_window=512)
    base = save_model(tmp_path / "gemma2", config)
    recipe = fast_and_peft(make_job(), base_model=base)
    assert recipe.logit_softcap == 2.0 and recipe.attention == "eager"


def test_a_sliding_window_the_packed_mask_cannot_apply_is_refused_before_training(make_job, tmp_path):
    from transformers import MistralConfig

    from launcher.errors import SpecError

    config = MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           sliding_window=64)
    base = save_model(tmp_path / "mistral", config)
    root = make_job()
    with pytest.raises(SpecError, match=r"sliding window of 64 tokens.*To fix: max_seq_len: 64 or less"):
        recipe_for(root, base_model=base).setup()
    assert not (root / "checkpoints").exists()
    recipe_for(root, base_model=base, max_seq_len="64", max_new_tokens="8").setup()  # within the window: fine
