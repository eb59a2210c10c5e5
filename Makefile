# The two commands of the README. Each builds or refreshes .venv from requirements.txt when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
SMOKE := recipes/smoke/pretrain.yaml

.PHONY: smoke test clean

# The main job: tokenizer → data → pretraining → samples, on the embedded corpus, offline, CPU.
smoke: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) tokenizer/train_tokenizer.py $(SMOKE)
	HF_HUB_OFFLINE=1 $(PY) data_prep/prepare.py $(SMOKE)
	HF_HUB_OFFLINE=1 $(PY) train.py $(SMOKE)
	HF_HUB_OFFLINE=1 $(PY) generate.py runs/smoke/final --max-new-tokens 48 \
		--prompt "def fibonacci(n):" --prompt "import os" --prompt "class Stack:" \
		--prompt "    def __init__(self" --prompt "# Return the"

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

clean:
	rm -rf runs
