# The two commands of the README: `make run` and `make test`. Both install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= config/gateway.yaml

.PHONY: run test lint bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m gateway serve --config $(CONFIG)

test: $(STAMP)
	command -v prometheus >/dev/null && command -v promtool >/dev/null \
		|| (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# The benchmark (tests/bench/README.md): the gateway against the thinnest aiohttp forwarder, on loopback.
# Installs what it needs from Debian: wrk (the load generator), valgrind (callgrind: deterministic instruction
# counts per request and per stream event) and, when it can, perf (instructions from the CPU counter, used
# only without valgrind, and only where the machine exposes the counter). taskset comes with util-linux.
# Pass options with BENCH_ARGS, e.g. `make bench BENCH_ARGS="--rounds 1 --only 'chat c=1' --no-callgrind"`.
BENCH_ARGS ?=
bench: $(STAMP)
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	command -v valgrind >/dev/null || (apt-get update && apt-get install -y valgrind) \
		|| echo "bench: valgrind is not available: instructions will not be counted under callgrind"
	command -v perf >/dev/null || apt-get install -y linux-perf || (apt-get update && apt-get install -y linux-perf) \
		|| echo "bench: perf is not available: instructions per request will not be reported"
	$(PY) -m tests.bench.run $(BENCH_ARGS)

# The soak (tests/bench/README.md): a fixed-rate mixed load with injected upstream faults, 10 minutes by default,
# on loopback. Shorter: `make soak SOAK_ARGS="--duration 60"`. Exits non-zero when a target is missed.
SOAK_ARGS ?=
soak: $(STAMP)
	$(PY) -m tests.bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
