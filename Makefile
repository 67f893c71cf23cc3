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

.PHONY: sweep test bench clean

$(INSTALLED): pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet "$(TORCH)"
	$(PYTHON) -m pip install --quiet -e ".[test]"
	touch $(INSTALLED)

sweep: $(INSTALLED)
	$(SEQPROF) sweep $(SWEEP_ARGS)

test: $(INSTALLED)
	$(PYTHON) -m pytest -q

# The GPU benchmarks (tests/bench): times saved by pytest-benchmark, peak memory as the memory gate's
# baseline, both under results/benchmarks; README.md shows the compare run. Extra pytest flags:
# make bench BENCH_ARGS="-k sasrec"
BENCH_ARGS ?=
bench: $(INSTALLED)
	$(PYTHON) -m pytest tests/bench -m gpu --benchmark-only --benchmark-storage=results/benchmarks \
		--benchmark-save=h100 --memory-baseline-save=results/benchmarks/memory-baseline.json $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
