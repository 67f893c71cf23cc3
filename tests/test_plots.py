"""Figures: the lines, styles, labels, reference curves and OOM marks of the matplotlib objects."""
import numpy as np
import pandas as pd
import pytest
from helpers import SYNTHETIC_MODELS, synthetic_results
from matplotlib.colors import to_rgb
from typer.testing import CliRunner

from profiler.analysis.series import series_of
from profiler.cli import app
from profiler.present.plots import OOM_Y, build_figures, line_styles, save_figures
from profiler.results.store import read_results

VARIANTS = {"sasrec[naive]", "convrec-light", "cosrec", "caser"}


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    path = tmp_path_factory.mktemp("plots") / "synthetic.csv"
    synthetic_results().to_csv(path, index=False)
    return read_results(path)


@pytest.fixture(scope="module")
def figures(frame):
    return build_figures(frame, baseline="sasrec", stem="syn")


def _data_lines(ax):
    return {line.get_label(): line for line in ax.get_lines() if line.get_label() in VARIANTS}


def test_one_figure_per_metric_and_a_ratio_figure(figures):
    assert set(figures) == {
        "syn-train-time_median_ms", "syn-train-peak_allocated_mib", "syn-train-tensor_footprint_mib",
        "syn-train-ratio-sasrec-naive",
    }


def test_memory_figure_has_one_line_per_variant_with_the_measured_points(figures, frame):
    linear, loglog = figures["syn-train-peak_allocated_mib"].axes
    for ax in (linear, loglog):
        lines = _data_lines(ax)
        assert set(lines) == VARIANTS
        cosrec = frame[(frame["model"] == "cosrec") & (frame["status"] == "ok")]
        np.testing.assert_array_equal(lines["cosrec"].get_xdata(), cosrec["seq_len"])
        np.testing.assert_allclose(lines["cosrec"].get_ydata(), cosrec["peak_allocated_mib"])
        # caser's error at L=100 leaves a gap, not a zero.
        assert 100 not in lines["caser"].get_xdata()
    assert linear.get_xscale() == "linear" and linear.get_yscale() == "linear"
    assert loglog.get_xscale() == "log" and loglog.get_yscale() == "log"


def test_attention_and_convolution_are_told_apart(figures):
    lines = _data_lines(figures["syn-train-time_median_ms"].axes[0])
    assert lines["sasrec[naive]"].get_linestyle() == "-"
    for name in ("convrec-light", "cosrec", "caser"):
        assert lines[name].get_linestyle() == "--"
    # Warm colours for attention, cool for convolution: red dominates the one, blue the others.
    red, _, blue = to_rgb(lines["sasrec[naive]"].get_color())
    assert red > blue
    for name in ("convrec-light", "caser"):
        red, _, blue = to_rgb(lines[name].get_color())
        assert blue > red
    assert len({lines[name].get_color() for name in lines}) == len(lines)


def test_reference_curves_start_at_the_baselines_first_point(figures, frame):
    ax = figures["syn-train-tensor_footprint_mib"].axes[0]
    references = {line.get_label(): line for line in ax.get_lines() if line.get_label().startswith("O(")}
    assert set(references) == {"O(L) from sasrec[naive]", "O(L²) from sasrec[naive]"}
    first = frame[(frame["model"] == "sasrec") & (frame["seq_len"] == 50)]["tensor_footprint_mib"].item()
    for label, power in (("O(L) from sasrec[naive]", 1), ("O(L²) from sasrec[naive]", 2)):
        x, y = references[label].get_xdata(), references[label].get_ydata()
        assert x[0] == 50 and y[0] == pytest.approx(first)
        assert y[-1] == pytest.approx(first * (x[-1] / 50) ** power)
    # The axes follow the data, not the O(L^2) curve that climbs far above it.
    measured_top = frame["tensor_footprint_mib"].max()
    assert ax.get_ylim()[1] == pytest.approx(measured_top * 1.12)


def test_oom_is_an_x_at_the_top_of_the_axes_at_the_failing_length(figures):
    for ax in figures["syn-train-time_median_ms"].axes:
        marks = [line for line in ax.get_lines() if line.get_label() == "cosrec OOM"]
        assert len(marks) == 1
        assert marks[0].get_marker() == "x"
        assert list(marks[0].get_xdata()) == [400] and list(marks[0].get_ydata()) == [OOM_Y]
        # x in data coordinates, y in axes coordinates: the mark sits at the top whatever the scale.
        x_display, y_display = marks[0].get_transform().transform((400, OOM_Y))
        assert y_display == pytest.approx(ax.transAxes.transform((0, OOM_Y))[1])
        assert x_display == pytest.approx(ax.transData.transform((400, 1))[0])
    legend_labels = [t.get_text() for t in figures["syn-train-time_median_ms"].legends[0].get_texts()]
    assert "out of memory (at top)" in legend_labels and "cosrec OOM" not in legend_labels


def test_title_names_gpu_batch_mode_and_dtype(figures):
    title = figures["syn-train-time_median_ms"]._suptitle.get_text()
    for part in ("time per step (ms)", "Test GPU 80GB", "batch 8", "train", "float32"):
        assert part in title


def test_ratio_figure_divides_by_the_baseline(figures, frame):
    time_ax, memory_ax = figures["syn-train-ratio-sasrec-naive"].axes
    lines = _data_lines(memory_ax)
    np.testing.assert_allclose(lines["sasrec[naive]"].get_ydata(), 1.0)
    footprint = SYNTHETIC_MODELS["convrec-light"][2]
    sasrec_footprint = SYNTHETIC_MODELS["sasrec"][2]
    x = np.asarray(lines["convrec-light"].get_xdata(), dtype=float)
    expected = (1.2 * footprint(x) + 30) / (1.2 * sasrec_footprint(x) + 30)
    np.testing.assert_allclose(lines["convrec-light"].get_ydata(), expected)
    assert "sasrec[naive]" in memory_ax.get_ylabel()


def test_backends_of_one_model_share_a_colour_and_differ_by_marker(frame):
    both = frame[frame["model"] == "sasrec"].copy()
    both["attention"] = "sdpa"
    styles = line_styles(series_of(pd.concat([frame, both])))
    assert styles["sasrec[naive]"]["color"] == styles["sasrec[sdpa]"]["color"]
    assert styles["sasrec[naive]"]["marker"] != styles["sasrec[sdpa]"]["marker"]


def test_figures_are_written_as_png_and_svg(figures, tmp_path):
    paths = save_figures({"one": figures["syn-train-time_median_ms"]}, tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["one.png", "one.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in paths[1].read_text()[:500]


def test_unknown_baseline_lists_the_variants(frame):
    with pytest.raises(ValueError, match="choose from caser, convrec-light, cosrec, sasrec"):
        build_figures(frame, baseline="bert4rec")


def test_plot_command_draws_into_the_folder_and_rejects_bad_files(tmp_path):
    results = tmp_path / "grid.csv"
    synthetic_results().to_csv(results, index=False)
    runner = CliRunner()
    result = runner.invoke(app, ["plot", str(results), "--out-dir", str(tmp_path / "figs"), "--baseline", "convrec-light"])
    assert result.exit_code == 0, result.output
    names = {p.name for p in (tmp_path / "figs").iterdir()}
    assert {"grid-train-time_median_ms.png", "grid-train-peak_allocated_mib.svg", "grid-train-ratio-convrec-light.png"} <= names
    result = runner.invoke(app, ["plot", str(results), "--out-dir", str(tmp_path / "figs"), "--baseline", "nope"])
    assert result.exit_code == 2 and "baseline 'nope' is not in the results" in result.output
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("a,b\n1,2\n")
    result = runner.invoke(app, ["plot", str(foreign)])
    assert result.exit_code == 2 and "is not a seqprof results file" in result.output
    assert len(result.output.strip().splitlines()) == 1
