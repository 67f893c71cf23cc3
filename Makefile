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

# After the first run seqprof is .venv/bin/seqprof; `source .venv/bin/activate` puts it on the PATH.
HOW_TO_RUN = echo "seqprof is installed in $(VENV): run $(SEQPROF) --help, or source $(VENV)/bin/activate and then seqprof --help"

sweep: $(INSTALLED)
	$(SEQPROF) sweep $(SWEEP_ARGS)
	@$(HOW_TO_RUN)

test: $(INSTALLED)
	$(PYTHON) -m pytest -q
	@$(HOW_TO_RUN)

# The GPU benchmarks (tests/bench): `make bench` saves times (pytest-benchmark) and peak memory (the
# memory gate's baseline) into results/benchmarks/<gpu>/, the folder of the GPU this machine has
# (profiler/bench/storage.py); `make bench-compare` fails a benchmark whose median time grew by more
# than 10% or whose peak memory by more than 10% since that GPU's baseline. Without a GPU, or without
# a baseline for it, make stops with one line saying what to do.
# The garbage collector is off during timed rounds: a collection inside a 1-ms round is a spike.
# Extra pytest flags: make bench BENCH_ARGS="-k sasrec"; the saved run's name: BENCH_NAME.
BENCH_ARGS ?=
BENCH_NAME ?= baseline
BENCH := $(PYTHON) -m pytest tests/bench -m gpu --benchmark-only --benchmark-disable-gc
# $(call bench_dir,FLAGS): this GPU's benchmark folder, or make stops with the reason.
bench_dir = $(eval BENCH_DIR := $(shell $(PYTHON) -m profiler.bench.storage $(1)))$(if $(filter 0,$(.SHELLSTATUS)),,$(error $(BENCH_DIR)))

bench: $(INSTALLED)
	$(call bench_dir,)
	$(BENCH) --benchmark-storage=$(BENCH_DIR) --benchmark-save=$(BENCH_NAME) \
		--memory-baseline-save=$(BENCH_DIR)/memory-baseline.json $(BENCH_ARGS)

bench-compare: $(INSTALLED)
	$(call bench_dir,--baseline)
	$(BENCH) --benchmark-storage=$(BENCH_DIR) --benchmark-compare --benchmark-compare-fail=median:10% \
		--memory-baseline-compare=$(BENCH_DIR)/memory-baseline.json $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
