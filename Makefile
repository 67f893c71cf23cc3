# `make sweep` and `make test` set everything up themselves: a virtual environment in .venv with
# the project installed, created on first use and refreshed when pyproject.toml changes.
VENV := .venv
PYTHON := $(VENV)/bin/python
SEQPROF := $(VENV)/bin/seqprof
INSTALLED := $(VENV)/.installed
# torch is installed first and pinned: a plain `torch` would let pip choose the newest build, which
# on a machine without a GPU drags in gigabytes of CUDA libraries. Override for another build:
# make sweep TORCH="torch==2.11.0"
TORCH ?= torch==2.13.0
SWEEP_ARGS ?=

.PHONY: sweep test bench bench-compare clean

$(INSTALLED): pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet "$(TORCH)"
	$(PYTHON) -m pip install --quiet -e ".[test,ray]"
	touch $(INSTALLED)

sweep: $(INSTALLED)
	$(SEQPROF) sweep $(SWEEP_ARGS)

test: $(INSTALLED)
	$(PYTHON) -m pytest -q

# The GPU benchmarks (tests/bench): `make bench` saves times (pytest-benchmark) and peak memory (the
# memory gate's baseline) under results/benchmarks; `make bench-compare` fails a benchmark whose
# median time grew by more than 10% or whose peak memory by more than 10% since that baseline.
# The garbage collector is off during timed rounds: a collection inside a 1-ms round is a spike.
# Extra pytest flags: make bench BENCH_ARGS="-k sasrec"; the saved run's name: BENCH_NAME.
BENCH_ARGS ?=
BENCH_NAME ?= h100
BENCH := $(PYTHON) -m pytest tests/bench -m gpu --benchmark-only --benchmark-disable-gc \
	--benchmark-storage=results/benchmarks
bench: $(INSTALLED)
	$(BENCH) --benchmark-save=$(BENCH_NAME) --memory-baseline-save=results/benchmarks/memory-baseline.json $(BENCH_ARGS)

bench-compare: $(INSTALLED)
	$(BENCH) --benchmark-compare --benchmark-compare-fail=median:10% \
		--memory-baseline-compare=results/benchmarks/memory-baseline.json $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
