"""The seed's headline job, timed end to end through the real entrypoint on one GPU.

    python benchmarks/end_to_end.py --out e2e.json                  # Llama-3-8B shape, 7,000 examples, 1 epoch
    python benchmarks/end_to_end.py --shape small --examples 200     # a CPU dry run of the same steps

The seed claims "3-5 days on one H100" and "48 h on two A100s" for 7,000 examples. This runs
``python -m entrypoints.train --root JOB`` exactly as a training job would: a Llama-3-8B-shaped model
saved from its config with random weights (no download; tiny-llama's tokenizer, so the text below
tokenises predictably), 7,000 training examples with the throughput benchmark's length distribution
(log-normal, median about 450 tokens, capped at 2,048; 40% prompt, 60% answer) as JSONL text, a
separate eval file, LoRA with the spec's defaults (r=16, all linear layers, micro-batch 4 x
accumulation 4 rows of max_seq_len 2,048 a step), evaluation on (held-out loss, 32 generated samples
of 128 tokens from base and tuned, ROUGE/BLEU/chrF, facts). It reports the wall time from process start
to ``metrics.json`` and the entrypoint's own phases (tokenise, load, train, save, evaluate) with
tokens/s.

One command on the lent GPU may run 10 minutes, so by default it trains ``--epochs 1`` and projects
three epochs as the measured fixed costs (start-up, tokenise, load, save, evaluate) plus three times the
measured training time; the output says which figures are projected.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train_throughput import LLAMA3_8B, SMALL, lengths  # noqa: E402

SYSTEM = "Write the claim summary for the case file."


def build_model(folder: Path, shape: dict) -> dict:
    """A random-weight model of ``shape`` saved as a normal checkpoint folder, with tiny-llama's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from entrypoints import tiny_llama

    started = time.perf_counter()
    tokenizer = tiny_llama.build_tokenizer()
    config = LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    cuda = torch.cuda.is_available()
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if cuda else torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return {"seconds": time.perf_counter() - started,
            "bytes": sum(p.stat().st_size for p in folder.iterdir() if p.is_file())}


def single_token_words(tokenizer) -> list[str]:
    """Words that are one token each after a space, so n words make about n tokens."""
    from entrypoints import tiny_llama

    return sorted({w for w in tiny_llama._WORDS if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1})


def write_dataset(path: Path, n: int, seed: int, words: list[str]) -> None:
    rng = random.Random(seed)
    with path.open("w") as out:
        for length in lengths(n, seed):
            prompt = max(2, int(length * 0.4)) - 12  # less the chat template's own tokens
            answer = length - int(length * 0.4)
            record = {"messages": [{"role": "system", "content": SYSTEM},
                                   {"role": "user", "content": " ".join(rng.choices(words, k=max(1, prompt)))},
                                   {"role": "assistant", "content": " ".join(rng.choices(words, k=max(1, answer - 1)))}]}
            out.write(json.dumps(record) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["llama3-8b", "small"], default="llama3-8b")
    parser.add_argument("--examples", type=int, default=7000)
    parser.add_argument("--eval-examples", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=1, help="epochs actually trained (3 are projected from them)")
    parser.add_argument("--root", default=None, help="the job folder (default: a new folder under /tmp)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--hp", default="{}", help="extra hyperparameters as JSON (the spec's defaults otherwise)")
    args = parser.parse_args()
    import tempfile

    from entrypoints import tiny_llama

    job = Path(args.root or tempfile.mkdtemp(prefix="e2e-"))
    model_dir = job.parent / f"{job.name}-base"
    model_dir.mkdir(parents=True, exist_ok=True)
    shape = LLAMA3_8B if args.shape == "llama3-8b" else SMALL
    built = build_model(model_dir, shape)
    print(f"base model saved: {built['bytes'] / 2**30:.1f} GiB in {built['seconds']:.0f} s (not part of the job)", flush=True)
    words = single_token_words(tiny_llama.build_tokenizer())
    for channel, n, seed in (("train", args.examples, 1), ("eval", args.eval_examples, 2)):
        folder = job / "input/data" / channel
        folder.mkdir(parents=True, exist_ok=True)
        write_dataset(folder / f"{channel}.jsonl", n, seed, words)
    hp = {"base_model": str(model_dir), "max_seq_len": "2048", "epochs": str(args.epochs), **json.loads(args.hp)}
    (job / "input/config").mkdir(parents=True, exist_ok=True)
    (job / "input/config/hyperparameters.json").write_text(json.dumps(hp))

    started = time.perf_counter()
    log_path = job / "train.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "entrypoints.train", "--root", str(job)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        first_line = None
        for line in proc.stdout:
            first_line = first_line or time.perf_counter()
            log.write(line)
            print(line, end="", flush=True)
        code = proc.wait()
    wall = time.perf_counter() - started
    metrics_file = job / "model/metrics.json"
    if code != 0 or not metrics_file.is_file():
        raise SystemExit(f"the job exited {code} without metrics.json; see {log_path}")
    metrics = json.loads(metrics_file.read_text())
    phases = metrics["phases_s"]
    startup = wall - sum(phases.values())  # interpreter, imports, anything outside the recipe's phases
    fixed = wall - phases["train"]
    per_epoch = phases["train"] / args.epochs
    report = {
        "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "shape": args.shape,
        "examples": args.examples, "epochs_trained": args.epochs, "base_model_build": built,
        "wall_s": wall, "startup_s": startup, "phases_s": phases, "exit_code": code,
        "train": metrics["train"], "eval": metrics.get("eval"), "quality": metrics.get("quality"),
        "fast_path": metrics.get("fast_path"), "data": metrics.get("data"),
        "per_epoch_train_s": per_epoch,
        "projected_3_epochs_s": fixed + 3 * per_epoch,
        "projected": args.epochs != 3,
    }
    print(f"\nwall {wall:.0f} s from process start to metrics.json: start-up {startup:.0f} s, "
          + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items())
          + f"; {metrics['train']['steps']} steps at {metrics['train']['tokens_per_s']:,.0f} tokens/s")
    print(f"3 epochs: {report['projected_3_epochs_s'] / 60:.1f} min"
          + (f" (projected: {fixed:.0f} s fixed + 3 x {per_epoch:.0f} s per epoch)" if report["projected"] else ""))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
