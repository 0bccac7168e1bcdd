"""Training throughput on one GPU: the Trainer-style baseline vs the entrypoint's fast path.

    python benchmarks/train_throughput.py --out results.json          # LoRA and QLoRA, Llama-3-8B shape
    python benchmarks/train_throughput.py --gpus 8 --methods lora     # ours on 8 GPUs (torchrun, DDP)

No download: a Llama-3-8B-shaped model is built from its config with random weights, and the dataset is
synthetic with a fixed, realistic length distribution (seeded log-normal, median ~450 tokens, capped at
2,048; 40% prompt, 60% answer). Both sides train LoRA r=16 / alpha 32 / dropout 0 on all linear layers
over the same examples in the same process:

* **baseline**: ``transformers.Trainer`` + peft as their documentation sets it up: micro-batch 8 padded to
  the longest example, no length grouping, gradient checkpointing, SDPA, bf16 (QLoRA: NF4 with double
  quantisation and ``prepare_model_for_kbit_training``).
* **ours**: ``entrypoints.train.Recipe``, the entrypoint's default GPU path, unchanged; only the base
  model and the tokenised data are injected (random weights, synthetic tokens).

Effective tokens/s counts non-padding tokens (prompt and answer). ``--gpus N`` starts the benchmark
under torchrun on N GPUs of this machine (``--gpus 1`` too: one process under the distributed wrapper)
and measures ours only: each step is the same global step, split over the ranks as the entrypoint
splits it; it reports the total and the per-GPU effective tokens/s. The numerics check trains a small
model of the same family on a learnable synthetic task with both paths for the same number of target
tokens and compares held-out losses. Prints a table; ``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from entrypoints import distributed, fast, sequences, train  # noqa: E402
from launcher.spec import TrainConfig  # noqa: E402

LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                 rope_theta=500000.0, tie_word_embeddings=False)
SMALL = dict(vocab_size=4096, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
             num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096, tie_word_embeddings=False)
CUDA = torch.cuda.is_available()  # the benchmark is for a GPU; on a CPU it only dry-runs (--shape small)
DEVICE = "cuda" if CUDA else "cpu"
MICRO_BATCH = 8  # the baseline's padded rows per step

LORA = dict(lora_r=16, lora_alpha=32.0, lora_dropout=0.0, target_modules="all-linear")  # peft's defaults but r, alpha


# --- data --------------------------------------------------------------------------------------------
def lengths(n: int, seed: int, median: int = 450, sigma: float = 0.75, cap: int = 2048, floor: int = 32) -> list[int]:
    rng = random.Random(seed)
    return [max(floor, min(cap, int(round(rng.lognormvariate(math.log(median), sigma))))) for _ in range(n)]


def synthetic(n: int, vocab: int, seed: int, learnable: bool = False) -> list[sequences.Tokenized]:
    """Random-token examples; 40% prompt, 60% answer. ``learnable``: the answer walks a fixed cycle over
    a 32-token alphabet, starting where the prompt's first token says, so every answer token but the
    first follows from the one before: a small model goes from ~ln(vocab) to well under 1 nat."""
    rng = random.Random(seed)
    alphabet = random.Random(0).sample(range(3, vocab), 32)  # the same rule for every seed
    successor = {a: alphabet[(i + 1) % len(alphabet)] for i, a in enumerate(alphabet)}
    out = []
    for length in lengths(n, seed):
        prompt = max(2, int(length * 0.4))
        ids = [rng.randrange(3, vocab) for _ in range(prompt)]
        if learnable:
            answer = [alphabet[ids[0] % len(alphabet)]]
            while len(answer) < length - prompt:
                answer.append(successor[answer[-1]])
        else:
            answer = [rng.randrange(3, vocab) for _ in range(length - prompt)]
        ids = ids + answer
        targets = [ids[i + 1] if i + 1 >= prompt else sequences.IGNORE for i in range(length - 1)] + [sequences.IGNORE]
        out.append(sequences.Tokenized(ids, targets))
    return out


# --- models ------------------------------------------------------------------------------------------
def build_base(shape: dict, method: str, attn: str, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    with torch.device(DEVICE):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if CUDA else torch.float32)
    model.config.use_cache = False
    if method == "qlora":
        quantize_nf4(model)
    return model


def quantize_nf4(model) -> None:
    """What from_pretrained(quantization_config=NF4, double quant, bf16 compute) produces, applied to the
    random weights in place: every decoder Linear becomes a bitsandbytes Linear4bit."""
    import bitsandbytes as bnb

    for module in list(model.model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4", device="cpu")
                q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=True, quant_type="nf4")
                setattr(module, name, q.to(DEVICE))  # moving a Params4bit to a device quantises it
                del child
    model.is_loaded_in_4bit = True
    torch.cuda.empty_cache()


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def reset_peak() -> None:
    if CUDA:
        torch.cuda.reset_peak_memory_stats()


def free() -> None:
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()
    reset_peak()


# --- baseline: transformers.Trainer + peft ------------------------------------------------------------
def run_baseline(shape, method, data, *, warmup: int, steps: int, eval_data=None, lr: float = 2e-4, seed: int = 0,
                 in_order: bool = False) -> dict:
    """``in_order``: examples in the given order, 8 a step (the numerics check), instead of shuffled."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import Trainer, TrainerCallback, TrainingArguments

    free()
    model = build_base(shape, method, attn="sdpa", seed=seed)
    if method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(r=LORA["lora_r"], lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"],
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    # Trainer-style labels: the unshifted labels with -100 on the prompt (the model shifts them).
    def record(t):
        labels = [sequences.IGNORE] + t.targets[:-1]
        return {"input_ids": t.input_ids, "labels": labels}

    dataset = [record(t) for t in data]  # a list is a map-style dataset to the Trainer
    effective: list[int] = []
    first: list[dict] = []  # the first training batch, re-scored after training

    def collate(features):  # DataCollatorForSeq2Seq(padding="longest") without needing a tokenizer file
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.zeros(len(features), width, dtype=torch.long)
        labels = torch.full((len(features), width), sequences.IGNORE, dtype=torch.long)
        mask = torch.zeros(len(features), width, dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"]), 1
        effective.append(int(mask.sum()))
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        if not first:
            first.append(batch)
        return batch

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            sync()
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            sync()
            times.append(time.perf_counter() - self.t)
            if state.global_step == warmup:
                reset_peak()

    # No length grouping: the default sampler in every transformers 5.x (5.24 names the option
    # train_sampling_strategy="random"; earlier ones group_by_length=False).
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=MICRO_BATCH, gradient_accumulation_steps=1, max_steps=warmup + steps,
            learning_rate=lr, lr_scheduler_type="constant", bf16=CUDA, use_cpu=not CUDA, gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": False}, logging_steps=1,
            save_strategy="no", report_to=[], dataloader_num_workers=0, seed=seed, remove_unused_columns=False,
            disable_tqdm=True, max_grad_norm=1.0,
        )
        class InOrder(Trainer):
            def _get_train_sampler(self, *args, **kwargs):
                return torch.utils.data.SequentialSampler(self.train_dataset)

        trainer = (InOrder if in_order else Trainer)(model=model, args=args, train_dataset=dataset, data_collator=collate, callbacks=[Clock()])
        if eval_data is not None:
            before = held_out_loss(model, eval_data)
        trainer.train()
        history = [h for h in trainer.state.log_history if "loss" in h]
        model.eval()
        with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=CUDA):
            rescored = float(model(**{k: v.to(DEVICE) for k, v in first[0].items()}).loss)
        result = _summary("baseline", method, times[warmup:], effective[warmup : warmup + steps],
                          history[0]["loss"], rescored, [h.get("grad_norm", 0.0) for h in history])
        if eval_data is not None:
            result["eval_loss_before"], result["eval_loss"] = before, held_out_loss(model, eval_data)
    del trainer, model
    free()
    return result


def held_out_loss(model, examples) -> float:
    """Mean cross-entropy per target token, one example at a time (Trainer.evaluate averages batch
    means instead, which weights tokens differently from ours)."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=CUDA):
        for t in examples:
            ids = torch.tensor([t.input_ids], device=DEVICE)
            labels = torch.tensor([[sequences.IGNORE] + t.targets[:-1]], device=DEVICE)
            total += float(model(input_ids=ids, labels=labels).loss) * t.n_targets
            count += t.n_targets
    return total / count


# --- ours: the entrypoint's Recipe --------------------------------------------------------------------
class BenchRecipe(train.Recipe):
    """The real recipe; only the base model (random weights) and the tokenised data are injected."""

    def __init__(self, shape, data, eval_data, hp, root, in_order: bool = False):
        plat = SimpleNamespace(channels={"train": root}, checkpoint_dir=root / "ckpt",
                               model_dir=root / "model", kind="local", job_name="bench", failure_file=None)
        super().__init__(plat, TrainConfig(base_model="bench", **hp))
        self.shape, self.data, self.eval_data, self.in_order = shape, data, eval_data, in_order

    def _setup_data(self):
        self.tokenizer = SimpleNamespace(pad_token_id=0)
        self.train_tokens, self.eval_tokens, self.general_tokens = self.data, self.eval_data or [], []
        self.metrics["data"] = {"train_examples": len(self.data)}

    def base_config(self):
        from transformers import LlamaConfig

        return LlamaConfig(**self.shape)

    def load_base(self, attn_implementation):
        return build_base(self.shape, self.config.method, attn=attn_implementation)

    def _setup_batches(self):
        super()._setup_batches()
        if self.in_order:  # the numerics check: the baseline's steps exactly, 8 examples a row, unshuffled
            self.rows = [list(range(i, min(i + 8, len(self.data)))) for i in range(0, len(self.data), 8)]

    def epoch_windows(self, epoch):
        if not self.in_order:
            return super().epoch_windows(epoch)
        return [[[row]] for row in self.rows]


def run_ours(shape, method, data, *, warmup: int, steps: int, eval_data=None, hp=None, in_order: bool = False,
             profile: Path | None = None) -> dict:
    """``profile``: the timed steps run under torch.profiler (slower) and its kernel table is written there."""
    free()
    times, effective = [], []
    with tempfile.TemporaryDirectory() as tmp:
        # The same user config as the baseline's; the fast path ignores micro_batch_size except for QLoRA's
        # default memory target (what these padded rows would take on the standard path).
        config = {**LORA, "method": method, "max_seq_len": 2048, "micro_batch_size": MICRO_BATCH, "gradient_accumulation_steps": 1, "max_steps": warmup + steps,
                  "lr_scheduler": "constant", "warmup_ratio": 0.0, "checkpoint_every": 10**6, "logging_steps": 10**6, **(hp or {})}
        recipe = BenchRecipe(shape, data, eval_data, config, Path(tmp), in_order=in_order)
        recipe.setup()
        from entrypoints import evaluate

        if eval_data is not None:
            total, count = evaluate.token_loss(recipe.model, recipe._loss_batches(eval_data), recipe.forward)
            before = total / count
        clock = {"t": None, "seen": 0}

        def on_step(step):
            sync()
            now = time.perf_counter()
            if clock["t"] is not None:
                times.append(now - clock["t"])
                effective.append(recipe.tokens_seen - clock["seen"])
            if step == warmup:
                reset_peak()
                if profile:
                    activity = torch.profiler.ProfilerActivity.CUDA if CUDA else torch.profiler.ProfilerActivity.CPU
                    clock["profiler"] = torch.profiler.profile(activities=[activity])
                    clock["profiler"].start()
            if profile and step == warmup + steps:
                clock["profiler"].stop()
                kernels = clock["profiler"].key_averages().table(sort_by="self_device_time_total" if CUDA else "self_cpu_time_total", row_limit=60, max_name_column_width=90)
                profile.write_text(kernels)
                print(kernels, flush=True)
            if step >= warmup:
                clock["t"], clock["seen"] = now, recipe.tokens_seen

        recipe.on_step = on_step
        recipe._checkpoint = lambda: None  # the benchmark measures training, not checkpoint I/O
        recipe.train()
        curve = recipe.loss_curve
        total, count = evaluate.token_loss(recipe.model, recipe.collate_window(recipe.epoch_windows(0)[0]), recipe.forward)
        result = _summary("ours", method, times, effective, curve[0]["loss"], total / count, [c["grad_norm"] for c in curve])
        result["fast_path"] = recipe.metrics.get("fast_path")
        # Several GPUs: the tokens of every rank over rank 0's time (the ranks step together).
        world = recipe.ranks.world_size
        result["processes"], result["distributed"] = world, recipe.strategy
        result["effective_tokens_per_s_per_gpu"] = result["effective_tokens_per_s"]
        everyone = distributed.all_reduce([sum(effective)], device=DEVICE)[0]
        result["effective_tokens_per_s"] = everyone / sum(times) if times else 0.0
        if eval_data is not None:
            total, count = evaluate.token_loss(recipe.model, recipe._loss_batches(eval_data), recipe.forward)
            result["eval_loss_before"], result["eval_loss"] = before, total / count
        del recipe
    free()
    return result


def _summary(side, method, times, effective, loss_first, loss_rescored, grad_norms) -> dict:
    """``loss_first``: the first step's loss; ``loss_rescored``: the same batch's loss after the last step."""
    total_time, total_tokens = sum(times), sum(effective)
    return {
        "side": side, "method": method, "steps_timed": len(times),
        "effective_tokens_per_s": total_tokens / total_time if total_time else 0.0,
        "step_time_s": total_time / max(1, len(times)),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if CUDA else 0.0,
        "step_times_s": [round(t, 4) for t in times], "effective_tokens_per_step": list(effective),
        "loss_first": loss_first, "loss_first_batch_after": loss_rescored, "loss_decreased": loss_rescored < loss_first,
        "grad_norm_min": min(grad_norms) if grad_norms else 0.0,
    }


# --- reference figures ---------------------------------------------------------------------------------
def matmul_peak_tflops() -> float:
    size = 8192 if CUDA else 512
    a = torch.randn(size, size, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=DEVICE, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(20):
        a @ b
    sync()
    return 2 * size**3 * 20 / (time.perf_counter() - start) / 1e12


def useful_flops_per_token(shape: dict, data: list[sequences.Tokenized]) -> float:
    """4 x the decoder layers' parameters per token, plus the output head's 4 x vocab x hidden for the
    tokens that have a target (a prompt token's logits are not needed), plus attention: 12 x layers x
    hidden x mean causal context (QK^T and PV forward, four products backward)."""
    h, f, n, kv, heads, v = (shape[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                 "num_key_value_heads", "num_attention_heads", "vocab_size"))
    head = h // heads
    per_layer = h * h * 2 + 2 * h * kv * head + 3 * h * f
    tokens = sum(len(t) for t in data)
    target_share = sum(t.n_targets for t in data) / tokens
    context = sum(len(t) * (len(t) + 1) / 2 for t in data) / tokens
    return 4 * n * per_layer + 4 * v * h * target_share + 12 * n * h * context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="lora,qlora")
    parser.add_argument("--examples", type=int, default=4000)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps of ours (its packed steps are all alike)")
    parser.add_argument("--baseline-steps", type=int, default=24,
                        help="timed steps of the baseline: its padded batches vary, so its mean needs more of them")
    parser.add_argument("--skip-numerics", action="store_true")
    parser.add_argument("--numerics-tokens", type=int, default=400_000, help="answer tokens each side trains on in the numerics check")
    parser.add_argument("--sides", default="ours,baseline")
    parser.add_argument("--lora-dropout", type=float, default=LORA["lora_dropout"], help="both sides (default 0, peft's and the entrypoint's)")
    parser.add_argument("--shape", choices=["llama3-8b", "small"], default="llama3-8b", help="small: a CPU dry run")
    parser.add_argument("--micro-batch-tokens", type=int, default=None, help="ours: fix the budget instead of measuring it")
    parser.add_argument("--max-memory-gib", type=float, default=None, help="ours: max_memory_gib (fewer layers checkpointed within it)")
    parser.add_argument("--attention", choices=["auto", "varlen", "flex"], default="auto", help="ours: attention (auto: varlen where available)")
    parser.add_argument("--torch-compile", action="store_true", help="ours: torch_compile: layers")
    parser.add_argument("--fp8", action="store_true", help="ours: fp8: on for LoRA (float8 base matmuls), numerics check included")
    parser.add_argument("--profile", default=None, help="ours: write the timed steps' kernel table (torch.profiler) to PROFILE-METHOD.txt")
    parser.add_argument("--gpus", type=int, default=None, help="ours on N GPUs of this machine, started through torchrun (DDP)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.gpus and not distributed.under_torchrun():
        from torch.distributed import run

        run.main(["--standalone", f"--nproc-per-node={args.gpus}", str(Path(__file__).resolve()), *sys.argv[1:]])
        return
    if args.gpus:  # a torchrun worker: ours only (the baseline and the numerics check are one-GPU figures)
        args.sides, args.skip_numerics = "ours", True
    rank_zero = os.environ.get("RANK", "0") == "0"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    LORA["lora_dropout"] = args.lora_dropout
    import importlib.metadata as md

    versions = {p: md.version(p) for p in ("torch", "transformers", "peft", "bitsandbytes", "liger_kernel", "triton") if _installed(p)}
    report = {"date": time.strftime("%Y-%m-%d"), "gpu": torch.cuda.get_device_name(0) if CUDA else "cpu", "versions": versions,
              "command": " ".join(sys.argv), "lora": dict(LORA), "matmul_peak_tflops": matmul_peak_tflops(), "runs": []}
    if rank_zero:
        print(f"GPU {report['gpu']}, bf16 matmul {report['matmul_peak_tflops']:.0f} TFLOP/s, {versions}", flush=True)
    shape = LLAMA3_8B if args.shape == "llama3-8b" else SMALL
    data = synthetic(args.examples, shape["vocab_size"], seed=1)
    flops = useful_flops_per_token(shape, data)
    ours_hp = {"micro_batch_tokens": args.micro_batch_tokens} if args.micro_batch_tokens else {}
    if args.max_memory_gib:
        ours_hp["max_memory_gib"] = args.max_memory_gib
    if args.attention != "auto":
        ours_hp["attention"] = args.attention
    if args.torch_compile:
        ours_hp["torch_compile"] = "layers"
    def save() -> None:
        if args.out and rank_zero:
            Path(args.out).write_text(json.dumps(report, indent=2))

    for method in args.methods.split(","):
        for side in args.sides.split(","):
            started = time.perf_counter()
            try:
                if side == "baseline":
                    result = run_baseline(shape, method, data, warmup=args.warmup, steps=args.baseline_steps)
                else:
                    fp8 = {"fp8": "on"} if args.fp8 and method == "lora" else {}
                    result = run_ours(shape, method, data, warmup=args.warmup, steps=args.steps, hp={**ours_hp, **fp8},
                                      profile=Path(f"{args.profile}-{method}.txt") if args.profile else None)
            except Exception as exc:  # keep going: one failed run must not lose the others' figures
                import traceback

                traceback.print_exc()
                report.setdefault("errors", []).append(f"{method}/{side}: {type(exc).__name__}: {exc}")
                free()
                continue
            result["wall_s"] = time.perf_counter() - started
            result["mfu"] = result["effective_tokens_per_s"] * flops / (report["matmul_peak_tflops"] * 1e12)
            report["runs"].append(result)
            if rank_zero:
                print(json.dumps(result), flush=True)
            save()
    if not args.skip_numerics:
        try:
            report["numerics"] = numerics(args.numerics_tokens, fp8=args.fp8)
        except Exception as exc:
            import traceback

            traceback.print_exc()
            report.setdefault("errors", []).append(f"numerics: {type(exc).__name__}: {exc}")
    if rank_zero:
        table(report)
    save()
    distributed.close()


def numerics(target_tokens: int = 400_000, fp8: bool = False) -> dict:
    """Same small model, LoRA initialisation, data, order and learning rate: both sides train on the
    same 8 examples each step (ours packs them into one row, the baseline pads them) until about
    ``target_tokens`` answer tokens, then both score the same held-out set. The task is learnable, so
    the losses move far from where they start and a numerical difference would show."""
    data = synthetic(3000, SMALL["vocab_size"], seed=7, learnable=True)
    held_out = synthetic(200, SMALL["vocab_size"], seed=8, learnable=True)
    mean_targets = sum(t.n_targets for t in data) / len(data)
    steps = min(len(data) // 8, round(target_tokens / (8 * mean_targets)))
    widest = max(sum(len(t) for t in data[i : i + 8]) for i in range(0, 8 * steps, 8))
    baseline = run_baseline(SMALL, "lora", data, warmup=0, steps=steps, eval_data=held_out, lr=1e-3, in_order=True)
    ours = run_ours(SMALL, "lora", data, warmup=0, steps=steps, eval_data=held_out, in_order=True,
                    hp={"learning_rate": 1e-3, "micro_batch_tokens": fast.round_up(widest), **({"fp8": "on"} if fp8 else {})})
    gap = abs(ours["eval_loss"] - baseline["eval_loss"]) / baseline["eval_loss"]
    return {"target_tokens": round(steps * 8 * mean_targets), "steps": steps,
            "eval_loss_before": {"baseline": baseline["eval_loss_before"], "ours": ours["eval_loss_before"]},
            "baseline_eval_loss": baseline["eval_loss"], "ours_eval_loss": ours["eval_loss"],
            "relative_gap": gap, "within_1pct": gap <= 0.01}


def table(report: dict) -> None:
    rows = {(r["method"], r["side"]): r for r in report["runs"]}
    for r in report["runs"]:
        if r.get("processes", 1) > 1 or r.get("distributed"):
            print(f"{r['method']} {r['side']}: {r['processes']} process(es), {r['distributed']}: {r['effective_tokens_per_s']:.0f} "
                  f"effective tokens/s in total, {r['effective_tokens_per_s_per_gpu']:.0f} per GPU")
    print(f"\n{'method':7} {'side':9} {'eff tok/s':>10} {'step s':>7} {'peak GiB':>9} {'MFU':>6} {'first batch loss':>17} {'min |g|':>8}")
    for (method, side), r in rows.items():
        print(f"{method:7} {side:9} {r['effective_tokens_per_s']:10.0f} {r['step_time_s']:7.2f} {r['peak_memory_gib']:9.1f} "
              f"{100 * r['mfu']:5.1f}% {r['loss_first']:8.4f}->{r['loss_first_batch_after']:7.4f} {r['grad_norm_min']:8.2e}")
    for method in {m for m, _ in rows}:
        if (method, "baseline") in rows and (method, "ours") in rows:
            ratio = rows[(method, "ours")]["effective_tokens_per_s"] / rows[(method, "baseline")]["effective_tokens_per_s"]
            print(f"{method}: ours / baseline = {ratio:.2f}x")
    if "numerics" in report:
        n = report["numerics"]
        print(f"numerics: eval loss {n['eval_loss_before']['baseline']:.4f} before; after {n['target_tokens']:,} answer tokens "
              f"baseline {n['baseline_eval_loss']:.4f}, ours {n['ours_eval_loss']:.4f}, gap {100 * n['relative_gap']:.2f}%")


def _installed(name: str) -> bool:
    import importlib.metadata as md

    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


if __name__ == "__main__":
    main()
