"""A tiny 'training' program for the Vertex AI fake's tests: reads its data and checkpoint through the
Cloud Storage FUSE paths (LAUNCHER_GCS_MOUNT), checkpoints each step, writes a model, exits as told.

    python -m vfake_trainer --steps=3 --sleep=0 --exit=0
"""

import json
import os
import sys
import time
from pathlib import Path


def gcs(uri: str) -> Path:
    return Path(os.environ.get("LAUNCHER_GCS_MOUNT", "/gcs")) / uri.removeprefix("gs://")


def main(argv: list[str]) -> int:
    options = dict(arg.removeprefix("--").split("=", 1) for arg in argv)
    steps, sleep, exit_code = int(options.get("steps", 3)), float(options.get("sleep", 0)), int(options.get("exit", 0))
    checkpoints, model = gcs(os.environ["AIP_CHECKPOINT_DIR"]), gcs(os.environ["AIP_MODEL_DIR"])
    state = checkpoints / "state.json"
    start = json.loads(state.read_text())["step"] if state.is_file() else 0
    print(f"start at step {start}")
    if os.environ.get("LAUNCHER_CHANNEL_TRAIN"):
        print(f"train rows {len(gcs(os.environ['LAUNCHER_CHANNEL_TRAIN']).read_text().splitlines())}")
    names = ("CLOUD_ML_JOB_ID", "CLOUD_ML_PROJECT_ID", "CLOUD_ML_REGION", "CLUSTER_SPEC", "AIP_TENSORBOARD_LOG_DIR")
    print("env " + json.dumps({name: os.environ.get(name) for name in names}))
    for step in range(start + 1, steps + 1):
        time.sleep(sleep)
        checkpoints.mkdir(parents=True, exist_ok=True)
        partial = checkpoints / "state.json.partial"
        partial.write_text(json.dumps({"step": step}))
        partial.replace(state)
        print(f"checkpointed step {step}")
    print("a warning, on stderr", file=sys.stderr)
    if exit_code:
        print(f"ValueError: exiting with {exit_code}", file=sys.stderr)
        return exit_code
    model.mkdir(parents=True, exist_ok=True)
    (model / "weights.bin").write_bytes(b"w" * 16)
    (model / "config.json").write_text(json.dumps({"steps": steps, "resumed_from": start}))
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
