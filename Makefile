# The two commands of the README. Each builds or refreshes .venv from requirements.txt when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
SMOKE := recipes/smoke/pretrain.yaml

.PHONY: smoke test clean mutation

# The main job: tokenizer → data → pretraining → samples, on the embedded corpus, offline, CPU.
smoke: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) tokenizer/train_tokenizer.py $(SMOKE)
	HF_HUB_OFFLINE=1 $(PY) data_prep/prepare.py $(SMOKE)
	HF_HUB_OFFLINE=1 $(PY) train.py $(SMOKE)
	HF_HUB_OFFLINE=1 $(PY) generate.py runs/smoke/final --max-new-tokens 48 \
		--temperature 0.7 --top-k 40 --top-p 0.9 --repetition-penalty 1.1 --seed 1234 \
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

# Mutation testing of the core modules (docs/mutation.md): not part of `test` or CI; about 10 minutes on 2 cores.
# One module at a time, each mutant against only the tests that call the mutated function; results in mutants/.
MUTATION_MODULES ?= lmtrain.data.packing lmtrain.data.sampler lmtrain.training.checkpoint lmtrain.corpus.dedup lmtrain.corpus.filters
MUTATION_JOBS ?= 2
mutation: $(STAMP)
	rm -rf mutants
	for module in $(MUTATION_MODULES); do \
		HF_HUB_OFFLINE=1 $(VENV)/bin/mutmut run --max-children $(MUTATION_JOBS) "$$module.*" > /dev/null || exit 1; \
	done
	@echo "killed (timeouts and crashes included) / mutants, per module:"
	@$(VENV)/bin/mutmut results --all true | $(PY) -c 'import collections, re, sys; c = collections.defaultdict(collections.Counter); [c[m[1]].update([m[2]]) for m in (re.match(r"\s*(lmtrain\.\S+?)\.x\S*: (.+)", line) for line in sys.stdin) if m]; [print("  %s: %d/%d (%.1f %%) %s" % (k, v["killed"] + v["timeout"] + v["segfault"], sum(v.values()), 100 * (v["killed"] + v["timeout"] + v["segfault"]) / sum(v.values()), dict(v))) for k, v in sorted(c.items())]'
	@echo "not killed (mutmut show NAME prints the diff):"
	$(VENV)/bin/mutmut results
