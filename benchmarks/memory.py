"""Peak GPU memory of the entrypoint's standard path against ``launcher plan``'s memory model.

    python benchmarks/memory.py --out memory.json        # Llama-3-8B shape, one H200

The memory model (launcher/memory.py) was checked against plain transformers + peft. This runs the
entrypoint's own recipe (``entrypoints.train.Recipe`` on the standard path, random weights, full
2,048-token rows) for two optimizer steps per configuration, with and without gradient checkpointing, and compares
``torch.cuda.max_memory_allocated`` with the model's allocated figure (weights + LoRA state +
activations + logits). It also counts the decoder layers' checkpoint calls, so a configuration that
says "checkpointing on" and does not checkpoint shows. ``--shape small`` dry-runs on a CPU.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from train_throughput import CUDA, LLAMA3_8B, SMALL, BenchRecipe, free  # noqa: E402

from entrypoints import sequences  # noqa: E402
from launcher import memory  # noqa: E402
from launcher.spec import TrainConfig  # noqa: E402

CONFIGS = [  # (micro_batch_size, lora_dropout, gradient checkpointing, max_seq_len): tests/test_memory.py's H200_PEAKS
    (8, 0.0, True, 2048),
    (2, 0.0, True, 2048),
    (4, 0.05, True, 2048),
    (2, 0.0, False, 2048),
    (1, 0.0, False, 2048),
    (1, 0.05, False, 2048),
    (1, 0.0, False, 4096),
]


def rows(n: int, vocab: int, length: int, seed: int = 0) -> list[sequences.Tokenized]:
    """Full rows of ``length`` tokens, 40% prompt: the plan's T = micro_batch_size x max_seq_len."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = int(0.4 * length)
        out.append(sequences.Tokenized(ids, [ids[i + 1] if i + 1 >= prompt else sequences.IGNORE for i in range(length - 1)] + [sequences.IGNORE]))
    return out


def measure(shape: dict, micro_batch: int, dropout: float, checkpointing: bool, seq: int, tmp: Path) -> dict:
    free()
    hp = {"lora_r": 16, "lora_alpha": 32.0, "lora_dropout": dropout, "target_modules": "all-linear", "max_seq_len": seq,
          "micro_batch_size": micro_batch, "gradient_accumulation_steps": 1, "packing": False, "fast_path": "off",
          "gradient_checkpointing": "on" if checkpointing else "off", "max_steps": 2, "checkpoint_every": 10**6, "logging_steps": 10**6,
          "max_new_tokens": 16}
    recipe = BenchRecipe(shape, rows(2 * micro_batch, shape["vocab_size"], seq), None, hp, tmp)
    recipe.setup()
    calls = {"n": 0}
    for layer in recipe.decoder_layers() if checkpointing else ():
        inner = layer._gradient_checkpointing_func

        def counted(*args, _inner=inner, **kwargs):
            calls["n"] += 1
            return _inner(*args, **kwargs)

        layer._gradient_checkpointing_func = counted
    recipe._checkpoint = lambda: None
    started = time.perf_counter()
    recipe.train()
    peak = torch.cuda.max_memory_allocated() if CUDA else 0
    elapsed = time.perf_counter() - started
    layers = len(recipe.decoder_layers())
    del recipe
    free()
    return {"micro_batch_size": micro_batch, "lora_dropout": dropout, "checkpointing": checkpointing, "seq": seq, "peak_allocated_gib": peak / 2**30,
            "checkpoint_calls": calls["n"], "expected_calls": 2 * layers if checkpointing else 0, "seconds": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["llama3-8b", "small"], default="llama3-8b")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import tempfile

    shape = LLAMA3_8B if args.shape == "llama3-8b" else SMALL
    model = memory.ModelShape.from_config(dict(shape, model_type="llama"), name=args.shape, source="config")
    report = {"date": time.strftime("%Y-%m-%d"), "gpu": torch.cuda.get_device_name(0) if CUDA else "cpu",
              "command": " ".join(sys.argv), "runs": []}
    for micro_batch, dropout, checkpointing, seq in CONFIGS:
        with tempfile.TemporaryDirectory() as tmp:
            result = measure(shape, micro_batch, dropout, checkpointing, seq, Path(tmp))
        estimate = memory.estimate_memory(model, TrainConfig(micro_batch_size=micro_batch, max_seq_len=seq, lora_dropout=dropout))
        predicted = estimate.weights + estimate.lora_state + estimate.activations(checkpointing) + estimate.logits
        result["predicted_allocated_gib"] = predicted / 2**30
        result["error_pct"] = 100 * (predicted / 2**30 - result["peak_allocated_gib"]) / result["peak_allocated_gib"] if CUDA else None
        report["runs"].append(result)
        print(json.dumps(result), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
