"""The memory gate as pytest options, and the fixture benchmarks report their memory through.

    --memory-baseline-save[=PATH]     write each benchmark's memory to the baseline after the run
    --memory-baseline-compare[=PATH]  fail a benchmark whose memory exceeds the baseline's
    --memory-tolerance=PCT            how far above the baseline is still a pass (default 10)

PATH defaults to results/benchmarks/<gpu>/memory-baseline.json under the project root, the folder
of the GPU the run sees (profiler/bench/storage.py; cpu/ without one). pytest registers a
sub-folder's options only when that folder is on the command line: `pytest tests/bench ...`.
"""
import os
from pathlib import Path

import pytest
import torch

from profiler.bench.memory_gate import (
    DEFAULT_TOLERANCE_PCT,
    BaselineFileError,
    Comparison,
    Entry,
    MemoryBaseline,
)
from profiler.bench.storage import BENCHMARKS_DIR, MEMORY_BASELINE, default_memory_baseline
from profiler.trackers.environment import collect_environment, git_commit

DEFAULT_SHOWN = f"{BENCHMARKS_DIR}/<gpu>/{MEMORY_BASELINE}"

# An option with an optional value swallows the next word, so `--memory-baseline-save tests/bench`
# would read the test folder as the file; a baseline path must name a .json file, which catches that.
BASELINE_SUFFIX = ".json"
DEFAULT_PATH = object()  # the option given without a value


def pytest_addoption(parser):
    group = parser.getgroup("memory gate", "seqprof: compare each benchmark's peak memory with a saved baseline")
    group.addoption(
        "--memory-baseline-save",
        nargs="?",
        const=DEFAULT_PATH,
        default=None,
        metavar="PATH",
        help=f"after the run, write each benchmark's memory to PATH (default {DEFAULT_SHOWN}); "
        "entries of benchmarks that did not run are kept. Give PATH as --memory-baseline-save=PATH.",
    )
    group.addoption(
        "--memory-baseline-compare",
        nargs="?",
        const=DEFAULT_PATH,
        default=None,
        metavar="PATH",
        help=f"fail a benchmark whose peak memory lies more than the tolerance above the baseline in PATH "
        f"(default {DEFAULT_SHOWN}). Give PATH as --memory-baseline-compare=PATH.",
    )
    group.addoption(
        "--memory-tolerance",
        type=float,
        default=DEFAULT_TOLERANCE_PCT,
        metavar="PCT",
        help=f"percent above the baseline that still passes (default {DEFAULT_TOLERANCE_PCT:g})",
    )


def _baseline_path(config, option: str) -> Path | None:
    value = config.getoption(option, default=None)
    if value is None:
        return None
    if value is DEFAULT_PATH:
        return default_memory_baseline(config.rootpath / BENCHMARKS_DIR)
    path = Path(value)
    if path.suffix != BASELINE_SUFFIX:
        raise pytest.UsageError(
            f"--{option.replace('_', '-')} got {value!r}, which is not a {BASELINE_SUFFIX} file; "
            f"write the path as --{option.replace('_', '-')}=PATH{BASELINE_SUFFIX}"
        )
    return path if path.is_absolute() else config.invocation_params.dir / path


class MemoryGate:
    """The session's gate: the entries measured so far and what comparing them found."""

    def __init__(self, save_path: Path | None, compare_path: Path | None, tolerance_pct: float):
        self.save_path = save_path
        self.compare_path = compare_path
        self.tolerance_pct = tolerance_pct
        self.baseline = self._load(compare_path) if compare_path else None
        # Loaded now, so a broken file stops the run before any benchmark, not after all of them.
        self.save_base = self._load(save_path) if save_path and save_path.exists() else MemoryBaseline({})
        self.measured: dict[str, Entry] = {}
        self.comparisons: list[Comparison] = []
        self.saved = False

    @staticmethod
    def _load(path: Path) -> MemoryBaseline:
        try:
            return MemoryBaseline.load(path)
        except BaselineFileError as exc:
            raise pytest.UsageError(str(exc)) from None

    def record(self, label: str, entry: Entry) -> Comparison | None:
        if label in self.measured:
            raise ValueError(f"memory gate: {label!r} was reported twice in one session")
        self.measured[label] = entry
        if self.baseline is None:
            return None
        comparison = self.baseline.compare(label, entry, self.tolerance_pct)
        self.comparisons.append(comparison)
        return comparison

    def pytest_sessionfinish(self, session):
        if self.save_path is not None and self.measured:
            self.save_base.updated(self.measured).save(self.save_path)
            self.saved = True

    def pytest_terminal_summary(self, terminalreporter):
        lines = []
        if self.baseline is not None:
            failed = [c for c in self.comparisons if c.failed]
            missing = [c.label for c in self.comparisons if c.missing]
            improved = [m for c in self.comparisons for m in c.improvements]
            lines.append(
                f"memory gate: compared {len(self.comparisons)} with {self.compare_path} "
                f"(tolerance {self.tolerance_pct:g}%): {len(failed)} failed"
            )
            lines += [f"  {m.message}" for m in improved]
            if improved:
                lines.append("  (memory fell: save the baseline again to keep the gain)")
            if missing:
                lines.append(f"  no baseline entry, not compared: {', '.join(missing)}")
        if self.save_path is not None:
            if self.saved:
                lines.append(f"memory gate: saved {len(self.measured)} to {self.save_path}")
            else:
                lines.append(f"memory gate: no benchmark measured memory; {self.save_path} not written")
        if lines:
            terminalreporter.write_sep("-", "memory gate")
            for line in lines:
                terminalreporter.write_line(line)


def pytest_configure(config):
    tolerance_pct = config.getoption("memory_tolerance", default=DEFAULT_TOLERANCE_PCT)
    if tolerance_pct < 0:
        raise pytest.UsageError(f"--memory-tolerance must be >= 0 percent, got {tolerance_pct:g}")
    gate = MemoryGate(
        _baseline_path(config, "memory_baseline_save"), _baseline_path(config, "memory_baseline_compare"), tolerance_pct
    )
    config.pluginmanager.register(gate, "seqprof-memory-gate")


def pytest_benchmark_update_machine_info(config, machine_info):
    """Saved runs name the GPU, driver and library versions their times belong to, as the sweep's
    metadata does. The timestamp stays out: pytest-benchmark warns when a compared run's machine
    info differs, which should mean another machine, not another hour."""
    environment = collect_environment("cuda" if torch.cuda.is_available() else "cpu")
    environment.pop("timestamp")
    machine_info["seqprof"] = environment


def pytest_benchmark_update_commit_info(config, commit_info):
    """pytest-benchmark reads the commit from git; a copy of the tree whose git history is absent
    or not its own names it through SEQPROF_GIT_COMMIT, as the sweep's metadata does."""
    if os.environ.get("SEQPROF_GIT_COMMIT") or commit_info.get("id") in ("unknown", "unversioned"):
        commit_info["id"] = git_commit()


@pytest.fixture
def memory_gate(request):
    """``check(label, device_name, metrics_mib)``: records a benchmark's memory for the baseline and,
    when comparing, fails the benchmark with a readable message if it grew past the tolerance."""
    gate: MemoryGate = request.config.pluginmanager.get_plugin("seqprof-memory-gate")

    def check(label: str, device_name: str, metrics_mib: dict[str, float]) -> None:
        comparison = gate.record(label, Entry(device_name, dict(metrics_mib)))
        if comparison is not None and comparison.failed:
            pytest.fail(comparison.message, pytrace=False)

    return check
