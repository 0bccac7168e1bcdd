#!/usr/bin/env bash
# make demo   (runs this with .venv/bin first on PATH; no cloud account, no GPU, no network needed)
#
# The whole loop on the example domain task (client financial-summary drafting): check the data,
# plan the production-size job, fine-tune tiny-llama on this machine's CPU, compare the base and the
# tuned model, then serve the tuned model on 127.0.0.1, ask it through launcher and through the
# openai client, send it traffic with planted drift, take it down and let the monitor report and
# alert. Running it again re-attaches to the finished job instead of training twice (the job id comes from the spec); `launcher train examples/fin-summary.yaml
# --new-run` trains afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
started=$SECONDS

step "1/6 Validate the dataset (examples/data, written by examples/make_dataset.py)"
launcher validate examples/fin-summary.yaml

step "2/6 Plan the production-size job: QLoRA on Llama-3-8B-Instruct, one H100, spot"
launcher plan examples/fin-summary-8b.yaml

step "3/6 Fine-tune tiny-llama on this machine (local backend, CPU)"
job_json=$(launcher train examples/fin-summary.yaml --backend local --json)
job_id=$(python -c 'import json, sys; print(json.loads(sys.argv[1])["job_id"])' "$job_json")

step "4/6 Base vs tuned on the held-out examples"
launcher report "$job_id"

step "5/6 Serve the tuned model locally, ask it twice (launcher, then the openai client)"
trap 'launcher undeploy demo-summaries >/dev/null 2>&1 || true' EXIT   # never leave the server behind
home=${LAUNCHER_HOME:-.launcher}
rm -rf "$home/endpoints/demo-summaries/capture" "$home/monitor"   # a rerun's monitor starts afresh, as the first run's
launcher deploy "$job_id" --name demo-summaries --monitor-sink log://
request=$(mktemp --suffix .json)   # a held-out client (examples/data/eval.jsonl), without the reference answer
python -c 'import json, sys; m = json.loads(open("examples/data/eval.jsonl").readline())["messages"]; json.dump({"messages": m[:-1]}, sys.stdout)' > "$request"
answer=$(launcher invoke demo-summaries --file "$request" --max-tokens 96)
printf '%s\n' "$answer"
python - "$(launcher endpoints --json)" "$request" "$answer" <<'PY'
import json
import sys

from openai import OpenAI  # the real client, unchanged, against the local endpoint

endpoint = next(e for e in json.loads(sys.argv[1]) if e["name"] == "demo-summaries")
client = OpenAI(base_url=endpoint["url"] + "/v1", api_key="unused-on-127.0.0.1")
messages = json.load(open(sys.argv[2]))["messages"]
answer = client.chat.completions.create(model=endpoint["models"][0], max_tokens=96, messages=messages)  # the tuned adapter
same = answer.choices[0].message.content.strip() == sys.argv[3].strip()  # greedy: the same text both ways
print(f"openai client, same request: {answer.usage.completion_tokens} tokens, {'the same answer' if same else 'a DIFFERENT answer'}")
sys.exit(0 if same else 1)
PY
rm -f "$request"

step "6/6 Monitor: normal traffic, then drifted traffic the model hallucinates on; alerts and an HTML report"
# 40 held-out clients as they are, then 40 with the Holdings and Cash lines cut from the prompt (an input
# drift): the tuned model still writes amounts, which its prompt no longer supports. Every request is
# captured by the endpoint; the monitor holds each 40-record window against the baseline training wrote
# (the eval prompts and the tuned model's answers).
python - "$(launcher endpoints --json)" <<'PY'
import json
import sys
from concurrent.futures import ThreadPoolExecutor

from openai import OpenAI

endpoint = next(e for e in json.loads(sys.argv[1]) if e["name"] == "demo-summaries")
client = OpenAI(base_url=endpoint["url"] + "/v1", api_key="unused-on-127.0.0.1")
rows = [json.loads(line)["messages"][:-1] for line in open("examples/data/eval.jsonl")][40:120]

def cut(messages):
    lines = [l for l in messages[-1]["content"].splitlines() if not l.startswith(("Holdings:", "Cash:"))]
    return messages[:-1] + [{"role": "user", "content": "\n".join(lines)}]

def ask(messages):  # 160 new tokens at most, as the evaluation that wrote the baseline allowed
    return client.chat.completions.create(model=endpoint["models"][0], max_tokens=160, messages=messages)

with ThreadPoolExecutor(8) as pool:
    list(pool.map(ask, rows[:40]))   # one window as the model was tuned for, in order
    list(pool.map(ask, [cut(m) for m in rows[40:]]))
print("sent 80 requests: 40 as usual, then 40 with Holdings and Cash cut from the prompt")
PY
launcher undeploy demo-summaries   # flushes the capture
trap - EXIT
launcher monitor poll --endpoint demo-summaries --window 40 --no-embeddings   # alerts: the log sink's JSON lines, then a summary

cat <<EOF

Done in $((SECONDS - started)) s. Next:
  launcher review $job_id --out review.csv      # samples for human raters (1-5)
  launcher review $job_id --import review.csv   # fold their ratings into the metrics
  launcher status $job_id                       # where the adapter and metrics are
EOF
