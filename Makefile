# metarec: `make help` lists the targets.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
ARGS ?=
TEST_WORKERS ?= 2

.PHONY: help setup train test test-slow bench results results-dbook results-movietweetings clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/metarec: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q "$(TORCH)"  # pinned: an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/pip install -q -e ".[dev,sweep]"
	@touch $@

setup: $(BIN)/metarec  ## create .venv with a pinned torch and metarec (editable, with dev + sweep extras)

train: setup  ## the main job: metarec train algo=maml data=movielens (ARGS="..." adds overrides)
	$(BIN)/metarec train algo=maml data=movielens $(ARGS)

test: setup  ## the default test suite (every test not marked slow), on TEST_WORKERS processes (default 2)
	$(BIN)/python -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadscope --durations=10

test-slow: setup  ## the slow end-to-end tests (CI runs them after make test)
	$(BIN)/python -m pytest -q -m slow

bench: setup  ## meta-training throughput: engine vs per-task loop vs supervised step
	$(BIN)/metarec bench --out bench.json

results: setup  ## every method x 3 split seeds (+ ridge's catalogue evaluation) on ml-100k and ml-1m -> docs/results[-ml1m].md and .seeds.json (ML100K=PATH ML1M=PATH)
	$(BIN)/python -m metarec.reporting.results $(if $(ML100K),--data-root $(ML100K)) $(ARGS)
	$(BIN)/python -m metarec.reporting.results --data ml-1m $(if $(ML1M),--data-root $(ML1M)) $(ARGS)

results-dbook: setup  ## every method x 3 seeds on DBook, our split and MetaHIN's -> docs/results-dbook*.md (DBOOK=PATH)
	$(BIN)/python -m metarec.reporting.results --data dbook $(if $(DBOOK),--data-root $(DBOOK)) $(ARGS)
	$(BIN)/python -m metarec.reporting.results --data dbook-metahin $(if $(DBOOK),--data-root $(DBOOK)) $(ARGS)

results-movietweetings: setup  ## every method x 3 seeds on MovieTweetings 100K -> docs/results-movietweetings.md (MOVIETWEETINGS=PATH)
	$(BIN)/python -m metarec.reporting.results --data movietweetings $(if $(MOVIETWEETINGS),--data-root $(MOVIETWEETINGS)) $(ARGS)

clean:  ## remove the venv, build files and caches (not outputs/)
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
