"""The memory gate: the baseline file, the comparison and its messages, and the pytest options of
tests/bench/conftest.py run end to end in a throwaway pytest session."""
import json
from pathlib import Path

import pytest

from profiler.bench.memory_gate import FORMAT, BaselineFileError, Entry, MemoryBaseline
from profiler.bench.storage import gpu_slug, visible_gpu

pytest_plugins = ["pytester"]

H100 = "NVIDIA H100 80GB HBM3"
LABEL = "sasrec[naive] train L=200"
BENCH_CONFTEST = Path(__file__).parent / "bench" / "conftest.py"


def baseline(mib: float = 409.3, device_name: str = H100) -> MemoryBaseline:
    return MemoryBaseline({LABEL: Entry(device_name, {"peak_allocated_mib": mib})})


def measured(mib: float, device_name: str = H100) -> Entry:
    return Entry(device_name, {"peak_allocated_mib": mib})


def test_growth_past_the_tolerance_fails_with_a_readable_message():
    comparison = baseline().compare(LABEL, measured(512.0), tolerance_pct=10)
    assert comparison.failed
    assert comparison.message == (
        "sasrec[naive] train L=200: peak allocated 512.0 MiB is 25.1% above the baseline 409.3 MiB (tolerance 10%)"
    )


def test_growth_within_the_tolerance_passes_and_a_drop_is_an_improvement():
    assert not baseline(400.0).compare(LABEL, measured(440.0), tolerance_pct=10).failed  # exactly 10% above
    assert baseline(400.0).compare(LABEL, measured(441.0), tolerance_pct=10).failed
    dropped = baseline(400.0).compare(LABEL, measured(300.0), tolerance_pct=10)
    assert not dropped.failed
    assert [m.message for m in dropped.improvements] == [
        "sasrec[naive] train L=200: peak allocated 300.0 MiB is 25.0% below the baseline 400.0 MiB (tolerance 10%)"
    ]


def test_a_label_missing_from_the_baseline_is_reported_not_failed():
    comparison = baseline().compare("sasrec[naive] train L=50", measured(100.0), tolerance_pct=10)
    assert comparison.missing and not comparison.failed


def test_a_baseline_from_another_device_fails_and_says_so():
    comparison = baseline(device_name="NVIDIA A100-SXM4-40GB").compare(LABEL, measured(409.3), tolerance_pct=10)
    assert comparison.failed
    assert "measured on NVIDIA A100-SXM4-40GB" in comparison.message and "--memory-baseline-save" in comparison.message


def test_a_negative_tolerance_is_refused():
    with pytest.raises(ValueError, match="tolerance"):
        baseline().compare(LABEL, measured(1.0), tolerance_pct=-1)


def test_save_and_load_round_trip_and_an_update_keeps_the_other_entries(tmp_path):
    path = tmp_path / "deep" / "memory-baseline.json"
    saved = baseline()
    saved.save(path)
    assert MemoryBaseline.load(path) == saved
    assert [p.name for p in path.parent.iterdir()] == ["memory-baseline.json"]  # no temporary left
    other = {"sasrec[naive] infer L=50": Entry(H100, {"peak_allocated_mib": 86.1})}
    saved.updated(other).save(path)
    assert sorted(MemoryBaseline.load(path).entries) == sorted([LABEL, *other])
    replaced = saved.updated({LABEL: measured(500.0)})
    assert replaced.entries[LABEL].metrics_mib == {"peak_allocated_mib": 500.0}


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{not json", "not a readable JSON file"),
        (json.dumps({"entries": {}}), "not a memory baseline"),
        (json.dumps({"format": FORMAT, "entries": []}), '"entries" must be an object'),
        (json.dumps({"format": FORMAT, "entries": {LABEL: {"peak_allocated_mib": 1.0}}}), "has no device_name"),
        (json.dumps({"format": FORMAT, "entries": {LABEL: {"device_name": H100, "peak_allocated_mib": -3}}}), "positive number"),
        (json.dumps({"format": FORMAT, "entries": {LABEL: {"device_name": H100, "peak_mb": 3}}}), "unknown figure 'peak_mb'"),
    ],
)
def test_a_broken_baseline_file_is_refused_with_a_message_naming_it(tmp_path, content, expected):
    path = tmp_path / "memory-baseline.json"
    path.write_text(content)
    with pytest.raises(BaselineFileError, match=expected) as info:
        MemoryBaseline.load(path)
    assert str(info.value).startswith(f"{path}: ")


def test_a_missing_baseline_file_says_how_to_make_one(tmp_path):
    with pytest.raises(BaselineFileError, match="save one first with --memory-baseline-save"):
        MemoryBaseline.load(tmp_path / "absent.json")


# The options, end to end: the suite's own conftest in a throwaway session whose one "benchmark"
# reports the peak memory given in an environment variable.
FAKE_BENCHMARK = f"""
import os

def test_point(memory_gate):
    memory_gate({LABEL!r}, {H100!r}, {{"peak_allocated_mib": float(os.environ["PEAK_MIB"])}})
"""


@pytest.fixture
def session(pytester, monkeypatch):
    pytester.makeconftest(BENCH_CONFTEST.read_text())
    pytester.makepyfile(test_fake_bench=FAKE_BENCHMARK)

    def run(peak_mib: float, *args):
        monkeypatch.setenv("PEAK_MIB", str(peak_mib))
        return pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)

    return run


def test_options_save_a_baseline_then_fail_a_run_that_grew(pytester, session):
    session(409.3, "--memory-baseline-save=base.json").assert_outcomes(passed=1)
    assert MemoryBaseline.load(pytester.path / "base.json") == baseline()

    session(420.0, "--memory-baseline-compare=base.json").assert_outcomes(passed=1)
    grown = session(512.0, "--memory-baseline-compare=base.json")
    grown.assert_outcomes(failed=1)
    assert (  # the failure's whole report, as pytest prints it
        "sasrec[naive] train L=200: peak allocated 512.0 MiB is 25.1% above the baseline 409.3 MiB (tolerance 10%)"
        in grown.stdout.lines
    )
    session(512.0, "--memory-baseline-compare=base.json", "--memory-tolerance=30").assert_outcomes(passed=1)


def test_options_default_to_the_results_folder_and_a_plain_run_writes_nothing(pytester, session):
    session(409.3).assert_outcomes(passed=1)
    assert not (pytester.path / "results").exists()
    result = session(409.3, "--memory-baseline-save")
    # The folder of the GPU the run sees (cpu/ without one), as `make bench` uses.
    folder = gpu_slug(visible_gpu() or "cpu")
    result.stdout.fnmatch_lines([f"memory gate: saved 1 to *results/benchmarks/{folder}/memory-baseline.json"])
    session(409.3, "--memory-baseline-compare").assert_outcomes(passed=1)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--memory-baseline-save", "tests"], "*--memory-baseline-save got 'tests', which is not a .json file*"),
        (["--memory-tolerance=-5"], "*--memory-tolerance must be >= 0 percent, got -5*"),
        (["--memory-baseline-compare=absent.json"], "*absent.json: no such memory baseline*"),
    ],
)
def test_bad_options_stop_the_run_with_a_usage_error(session, args, expected):
    result = session(1.0, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])
