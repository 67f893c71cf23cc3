"""`seqprof compare`: two H200 runs of one commit agree, an injected slowdown is flagged at exactly the
points it hit, --fail-above gates on it; and `report`/`plot` over several files."""
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import synthetic_results
from typer.testing import CliRunner

from profiler.analysis.compare import compare_runs, median_interval_over_points, ratio_interval
from profiler.cli import app, main
from profiler.present.comparison import summary_lines
from profiler.results.record import PointRecord, parse_samples, samples_text
from profiler.results.store import read_results

RESULTS = Path(__file__).resolve().parent.parent / "results"
RUN1, RUN2 = RESULTS / "h200-default-run1.csv", RESULTS / "h200-default-run2.csv"
runner = CliRunner()


def slowed(frame, factor: float = 1.3, every: int = 9):
    """``frame`` with the step times of every ``every``-th ok point multiplied by ``factor``; and their labels."""
    frame = frame.copy()
    hit = frame.index[frame["status"] == "ok"][::every]
    frame.loc[hit, "step_times_ms"] = [samples_text(np.array(parse_samples(t)) * factor) for t in frame.loc[hit, "step_times_ms"]]
    frame.loc[hit, "time_median_ms"] *= factor
    return frame, {PointRecord.from_row(frame.loc[i].to_dict()).spec.label for i in hit}


def slower(comparison) -> set[str]:
    return {p.spec.label for p in comparison.points if p.time_change == "slower"}


def test_two_runs_of_one_commit_show_no_change_at_95_percent_of_points():
    comparison = compare_runs(read_results(RUN1), read_results(RUN2))
    assert len(comparison.points) == 106  # both OOM points are set apart, not compared
    assert [(spec.label, b, c) for spec, b, c in comparison.not_ok] == [
        ("cosrec train L=500", "oom", "oom"), ("cosrec-plus train L=500", "oom", "oom")]
    assert len(comparison.unchanged) >= 0.95 * len(comparison.points)
    assert comparison.count("more memory") == comparison.count("less memory") == 0  # peak allocated is identical
    for point in comparison.points:
        low, high = point.time_ci
        assert low <= point.time_ratio <= high


def test_an_injected_slowdown_is_flagged_at_exactly_the_points_it_hit():
    run1, run2 = read_results(RUN1), read_results(RUN2)
    candidate, hit = slowed(run1)
    assert len(hit) == 12
    comparison = compare_runs(run1, candidate)
    assert slower(comparison) == hit and not comparison.count("faster")
    for point in comparison.points:
        if point.spec.label in hit:
            assert point.time_ratio == pytest.approx(1.3, rel=1e-3) and point.time_ci[0] > 1.2
    # Against the other run, the same injection adds exactly its points to what the runs' drift marks.
    drift = slower(compare_runs(run1, run2))
    assert slower(compare_runs(run1, slowed(run2)[0])) == drift | hit


def test_a_slowdown_of_every_point_moves_the_run_as_a_whole_and_one_of_a_few_points_does_not():
    run1, run2 = read_results(RUN1), read_results(RUN2)
    moved = compare_runs(run1, slowed(run2, every=1)[0])
    assert moved.run_time_ratio == pytest.approx(1.3, rel=0.01) and moved.run_time_ci[0] > 1.25
    assert moved.run_change == "slower"
    assert "slower beyond 5%: points that move together" in summary_lines(moved)[1]
    for candidate in (run2, slowed(run2)[0]):  # the runs' own drift; 12 of 106 points 1.3x slower
        comparison = compare_runs(run1, candidate)
        low, high = comparison.run_time_ci
        assert low <= comparison.run_time_ratio <= high and abs(comparison.run_time_ratio - 1) < 0.02
        assert comparison.run_change == "" and "beyond" not in summary_lines(comparison)[1]
    assert math.isnan(median_interval_over_points([1.1, 1.2])[0])  # too few points for an interval


def test_the_interval_is_from_the_raw_samples():
    rng = np.random.default_rng(1)
    base = 10 + rng.normal(0, 0.1, 20)
    low, high = ratio_interval(base, base * 1.3)
    assert low < 1.3 < high and low > 1.25
    low, high = ratio_interval(base, base[::-1])
    assert low < 1.0 < high
    assert all(math.isnan(v) for v in ratio_interval(base, [10.0]))


def test_memory_grows_are_marked_by_the_threshold(tmp_path):
    base = synthetic_results()
    candidate = base.copy()
    candidate.loc[candidate["model"] == "sasrec", "peak_allocated_mib"] *= 1.2
    comparison = compare_runs(base, candidate)
    marked = {p.spec.model for p in comparison.points if p.memory_change == "more memory"}
    assert marked == {"sasrec"}
    assert {p.spec.model for p in comparison.worse(0.1)} == {"sasrec"} and not comparison.worse(0.25)


def test_compare_prints_each_point_and_fails_above_a_threshold(tmp_path, capsys):
    candidate, hit = slowed(read_results(RUN1))
    candidate_path = tmp_path / "slowed.csv"
    candidate.to_csv(candidate_path, index=False)
    assert main(["compare", str(RUN1), str(RUN2), "--fail-above", "20"]) == 0
    printed = capsys.readouterr().out
    assert "106 points in common: 1 slower, 1 faster, 0 more memory, 0 less memory; 104 (98%) without a change" in printed
    assert "! slower +12.2%" in printed  # LRURec training at L = 50, the runs' largest difference
    assert main(["compare", str(RUN1), str(candidate_path), "--fail-above", "20", "--markdown", str(tmp_path / "c.md")]) == 1
    captured = capsys.readouterr()
    assert "seqprof: 12 of 106 points worse by more than 20%" in captured.err
    assert captured.out.count("! slower +30.0%") == 12
    assert "| sasrec[naive] | train | 128 | 50 |" in (tmp_path / "c.md").read_text()


def test_compare_of_a_missing_file_is_one_line(tmp_path, capsys):
    assert main(["compare", str(RUN1), str(tmp_path / "nope.csv")]) == 2
    captured = capsys.readouterr()
    assert (captured.out + captured.err).strip().splitlines() == [f"seqprof: error: results file {tmp_path / 'nope.csv'} does not exist"]


def test_report_and_plot_take_several_files_and_refuse_conflicting_rows(tmp_path, capsys):
    frame = synthetic_results()
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    frame[frame["model"].isin(["sasrec", "convrec-light"])].to_csv(first, index=False)
    frame[frame["model"].isin(["cosrec", "caser"])].to_csv(second, index=False)
    result = runner.invoke(app, ["report", str(first), str(second), str(second)])  # a file given twice counts once
    assert result.exit_code == 0, result.output
    assert f"results: {first}, {second}" in result.output and "points: 24" in result.output
    for model in ("sasrec[naive]", "convrec-light", "cosrec", "caser"):
        assert model in result.output
    result = runner.invoke(app, ["plot", str(first), str(second), "--plots-dir", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "plots" / "a+b-train-time_median_ms.png").exists()
    assert main(["report", str(RUN1), str(RUN2)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"seqprof: error: results files {RUN1} and {RUN2} both hold model=sasrec")


def test_with_later_replaces_a_point_measured_again_takes_the_last_files_row(tmp_path):
    frame = synthetic_results()
    first, again = tmp_path / "first.csv", tmp_path / "again.csv"
    frame.to_csv(first, index=False)
    remeasured = frame[frame["model"] == "sasrec"].copy()
    remeasured["time_median_ms"] = remeasured["time_median_ms"] / 10
    remeasured.to_csv(again, index=False)
    assert runner.invoke(app, ["report", str(first), str(again)]).exit_code == 2  # conflicting rows, unasked
    result = runner.invoke(app, ["report", str(first), str(again), "--later-replaces"])
    assert result.exit_code == 0 and "the last file's row" in result.output

    from profiler.results.store import read_many

    rows = read_many([first, again], later_replaces=True)
    assert len(rows) == len(frame)  # every point once
    sasrec = rows[rows["model"] == "sasrec"].sort_values(["mode", "seq_len"])
    expected = remeasured.sort_values(["mode", "seq_len"])
    assert list(sasrec["time_median_ms"]) == pytest.approx(list(expected["time_median_ms"]), nan_ok=True)
    others = rows[rows["model"] != "sasrec"].sort_values(["model", "mode", "seq_len"])
    kept = frame[frame["model"] != "sasrec"].sort_values(["model", "mode", "seq_len"])
    assert list(others["time_median_ms"]) == pytest.approx(list(kept["time_median_ms"]), nan_ok=True)
    result = runner.invoke(app, ["plot", str(first), str(again), "--later-replaces", "--plots-dir", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p" / "first+again-train-time_median_ms.png").exists()
