#!/usr/bin/env bash
# make demo   (runs this with .venv/bin first on PATH; no cloud account, no GPU, no network needed)
#
# The whole loop on the example domain task (client financial-summary drafting): check the data,
# plan the production-size job, fine-tune tiny-llama on this machine's CPU, then compare the base
# and the tuned model. Running it again re-attaches to the finished job instead of training twice
# (the job id comes from the spec); `launcher train examples/fin-summary.yaml --new-run` trains afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
started=$SECONDS

step "1/4 Validate the dataset (examples/data, written by examples/make_dataset.py)"
launcher validate examples/fin-summary.yaml

step "2/4 Plan the production-size job: QLoRA on Llama-3-8B-Instruct, one H100, spot"
launcher plan examples/fin-summary-8b.yaml

step "3/4 Fine-tune tiny-llama on this machine (local backend, CPU)"
job_json=$(launcher train examples/fin-summary.yaml --backend local --json)
job_id=$(python -c 'import json, sys; print(json.loads(sys.argv[1])["job_id"])' "$job_json")

step "4/4 Base vs tuned on the held-out examples"
launcher report "$job_id"

cat <<EOF

Done in $((SECONDS - started)) s. Next:
  launcher review $job_id --out review.csv      # samples for human raters (1-5)
  launcher review $job_id --import review.csv   # fold their ratings into the metrics
  launcher status $job_id                       # where the adapter and metrics are
EOF
