"""Figures: lines, encoding, bands, guides, OOM marks, units, panels, the breakdown, where files go,
and SVG bytes that do not change from one render to the next."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import SYNTHETIC_MODELS, synthetic_results
from matplotlib.collections import PolyCollection
from typer.testing import CliRunner

from models.registry import REGISTRY
from profiler.analysis.series import series_of
from profiler.cli import app
from profiler.present.plots import (
    BACKEND_MARKER,
    FAMILY_LINESTYLE,
    MODEL_COLOURS,
    OOM_TOP,
    build_figures,
    family_panels,
    line_styles,
    memory_ticks,
    model_colour,
    save_figures,
)
from profiler.results.record import parse_samples
from profiler.results.store import read_results
from profiler.units import format_memory

VARIANTS = {"sasrec[naive]", "convrec-light", "cosrec", "caser"}
H200 = Path(__file__).resolve().parent.parent / "results" / "h200-default-run2.csv"


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    path = tmp_path_factory.mktemp("plots") / "synthetic.csv"
    results = synthetic_results()
    # SASRec's first two lengths are bound by launching kernels: hollow markers in the time figure.
    results.loc[(results["model"] == "sasrec") & (results["seq_len"] <= 100), "launch_bound"] = True
    results.to_csv(path, index=False)
    return read_results(path)


@pytest.fixture(scope="module")
def figures(frame):
    return build_figures(frame, baseline="sasrec", stem="syn")


@pytest.fixture(scope="module")
def h200_figures():
    return build_figures(read_results(H200), stem="h200")


def _main_axes(fig):
    """The log-log panels (the linear ones beneath them and the legend cell are not)."""
    return [ax for ax in fig.axes if ax.get_xscale() == "log" and ax.get_visible()]


def _linear_axes(fig):
    return [ax for ax in fig.axes if ax.get_xscale() == "linear" and ax.axison]


def _data_lines(ax):
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def _legend_texts(fig):
    return [t.get_text() for legend in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
            for t in legend.get_texts()]


def test_one_figure_per_metric_a_breakdown_and_a_ratio_figure(figures):
    assert set(figures) == {
        "syn-train-time_median_ms", "syn-train-peak_allocated_mib", "syn-train-tensor_footprint_mib",
        "syn-train-memory_breakdown", "syn-train-ratio-sasrec-naive",
    }


def test_log_log_panel_with_the_same_curves_on_linear_axes_beneath(figures, frame):
    fig = figures["syn-train-peak_allocated_mib"]
    [loglog], [linear] = _main_axes(fig), _linear_axes(fig)
    assert loglog.get_yscale() == "log" and linear.get_yscale() == "linear"
    cosrec = frame[(frame["model"] == "cosrec") & (frame["status"] == "ok")]
    for ax in (loglog, linear):
        lines = _data_lines(ax)
        assert set(lines) == VARIANTS
        np.testing.assert_array_equal(lines["cosrec"].get_xdata(), cosrec["seq_len"])
        np.testing.assert_allclose(lines["cosrec"].get_ydata(), cosrec["peak_allocated_mib"])
        assert 100 not in lines["caser"].get_xdata()  # caser's error at L=100 leaves a gap, not a zero
    # The log-log panel is the main one: it is taller than the linear one.
    assert loglog.get_position().height > 2 * linear.get_position().height


def test_colour_is_the_models_line_style_the_familys_marker_the_backends(figures, frame):
    lines = _data_lines(_main_axes(figures["syn-train-time_median_ms"])[0])
    assert lines["sasrec[naive]"].get_linestyle() == "-"
    assert {lines[name].get_linestyle() for name in ("convrec-light", "cosrec", "caser")} == {"--"}
    assert len({line.get_color() for line in lines.values()}) == len(lines)
    for name, line in lines.items():
        assert line.get_color() == model_colour(name.split("[")[0])
    # The same model keeps its colour in a figure without the others.
    alone = build_figures(frame[frame["model"] == "caser"], stem="one")["one-train-time_median_ms"]
    assert _data_lines(_main_axes(alone)[0])["caser"].get_color() == lines["caser"].get_color()
    both = frame[frame["model"] == "sasrec"].copy()
    both["attention"] = "sdpa"
    styles = line_styles(series_of(pd.concat([frame, both])))
    assert styles["sasrec[naive]"]["color"] == styles["sasrec[sdpa]"]["color"]
    assert (styles["sasrec[naive]"]["marker"], styles["sasrec[sdpa]"]["marker"]) == (BACKEND_MARKER["naive"], BACKEND_MARKER["sdpa"])


def test_every_registered_model_has_its_own_colour_and_every_family_its_line():
    assert len({model_colour(name) for name in REGISTRY}) == len(REGISTRY) <= len(MODEL_COLOURS)
    assert {spec.family for spec in REGISTRY.values()} <= set(FAMILY_LINESTYLE)


def test_the_legend_explains_colour_line_marker_and_marks(figures):
    texts = _legend_texts(figures["syn-train-time_median_ms"])
    for expected in ("model (colour)", "family (line)", "attention backend (marker)", "sasrec", "caser",
                     "attention", "convolution", "naive (materialised)", "none (no attention layer)"):
        assert expected in texts
    assert "guides ∝L, ∝L²\n(from sasrec[naive]'s first\npoint in its panel)" in texts
    assert any(t.startswith("hollow: launch-bound") for t in texts)
    assert any(t.startswith("band: p10–p90") for t in texts)
    assert any(t.startswith("arrow to the top: out of") for t in texts)
    # Memory has no raw samples and no launch-bound marks.
    memory_texts = _legend_texts(figures["syn-train-peak_allocated_mib"])
    assert not any(t.startswith(("hollow", "band")) for t in memory_texts)


def test_bands_span_p10_to_p90_of_the_raw_samples(figures, frame):
    ax = _main_axes(figures["syn-train-time_median_ms"])[0]
    [band] = [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_label() == "_p10-p90 convrec-light"]
    rows = frame[(frame["model"] == "convrec-light") & (frame["status"] == "ok")]
    low = [np.percentile(parse_samples(t), 10) for t in rows["step_times_ms"]]
    high = [np.percentile(parse_samples(t), 90) for t in rows["step_times_ms"]]
    vertices = band.get_paths()[0].vertices
    for length, p10, p90 in zip(rows["seq_len"], low, high):
        at = vertices[np.isclose(vertices[:, 0], length)][:, 1]
        assert min(at) == pytest.approx(p10) and max(at) == pytest.approx(p90)
    assert not [c for c in _main_axes(figures["syn-train-peak_allocated_mib"])[0].collections if "p10" in str(c.get_label())]


def test_launch_bound_time_points_are_hollow(figures):
    ax = _main_axes(figures["syn-train-time_median_ms"])[0]
    [hollow] = [line for line in ax.get_lines() if line.get_label() == "_launch-bound sasrec[naive]"]
    assert list(hollow.get_xdata()) == [50, 100] and hollow.get_markerfacecolor() == "white"
    filled = next(line for line in ax.get_lines() if line.get_label() == "_markers sasrec[naive]")
    assert 50 not in filled.get_xdata() and 200 in filled.get_xdata()
    memory = _main_axes(figures["syn-train-peak_allocated_mib"])[0]
    assert not [line for line in memory.get_lines() if line.get_label().startswith("_launch-bound")]


def test_guides_start_at_the_baselines_first_point_and_stay_inside_the_axes(figures, frame):
    ax = _main_axes(figures["syn-train-tensor_footprint_mib"])[0]
    guides = {line.get_label(): line for line in ax.get_lines() if line.get_label().startswith("_guide")}
    assert set(guides) == {"_guide ∝ L from sasrec[naive]", "_guide ∝ L² from sasrec[naive]"}
    first = frame[(frame["model"] == "sasrec") & (frame["seq_len"] == 50)]["tensor_footprint_mib"].item()
    for label, power in (("_guide ∝ L from sasrec[naive]", 1), ("_guide ∝ L² from sasrec[naive]", 2)):
        x, y = guides[label].get_xdata(), guides[label].get_ydata()
        assert x[0] == 50 and y[0] == pytest.approx(first)
        assert y[-1] == pytest.approx(first * (x[-1] / 50) ** power)
        assert y.max() < ax.get_ylim()[1] and x.max() <= ax.get_xlim()[1]
    assert {t.get_text() for t in ax.texts} >= {"∝L", "∝L²"}


def test_oom_is_an_arrow_to_the_top_labelled_at_the_failing_length(figures, frame):
    ax = _main_axes(figures["syn-train-time_median_ms"])[0]
    [label] = [t for t in ax.texts if t.get_text().startswith("OOM")]
    assert label.get_text() == "OOM at L=400: cosrec"
    assert label.get_position()[0] == 400
    [arrow] = [a for a in ax.texts if a.get_text() == "" and getattr(a, "arrow_patch", None) is not None]
    assert arrow.xy == (400, OOM_TOP)
    last = frame[(frame["model"] == "cosrec") & (frame["status"] == "ok")].iloc[-1]
    assert arrow.xyann == pytest.approx((last["seq_len"], last["time_median_ms"]))
    # No marker stands where no measurement is.
    assert not [line for line in ax.get_lines() if 400 in np.asarray(line.get_xdata()) and "cosrec" in line.get_label()]


def test_memory_is_in_mib_below_1024_and_gib_from_there(h200_figures):
    ax = _main_axes(h200_figures["h200-train-peak_allocated_mib"])[0]
    ticks = ax.yaxis.get_major_locator()()
    labels = [ax.yaxis.get_major_formatter()(value, i) for i, value in enumerate(ticks)]
    assert labels == [format_memory(v) for v in ticks]
    assert any(l.endswith(" MiB") for l in labels) and any(l.endswith(" GiB") for l in labels)
    assert all(float(l.split()[0]) < 1024 for l in labels if l.endswith("MiB"))
    assert memory_ticks(100, 5000, log=True) == [128, 256, 512, 1024, 2048, 4096]
    assert memory_ticks(0, 30000, log=False) == [0, 10240, 20480]  # 0, 10, 20 GiB
    texts = [t.get_text() for a in h200_figures["h200-train-peak_allocated_mib"].axes for t in a.get_yticklabels()]
    assert not any(t.endswith((" MB", " GB")) for t in texts)


def test_more_than_eight_series_get_one_panel_per_family_on_shared_axes(h200_figures):
    group = [s for s in series_of(read_results(H200)) if s.key.mode == "train"]
    assert len(group) > 8
    parts = family_panels(group)
    assert [family for family, _ in parts] == ["attention", "convolution", "linear-attention, fft-filter, recurrence"]
    fig = h200_figures["h200-train-time_median_ms"]
    mains = _main_axes(fig)
    assert [ax.get_title() for ax in mains] == [family for family, _ in parts]
    assert len({ax.get_ylim() for ax in mains}) == 1 and len({ax.get_xlim() for ax in mains}) == 1
    shown = [name for ax in mains for name in _data_lines(ax)]
    assert sorted(shown) == sorted(s.key.variant for s in group)
    assert len(_linear_axes(fig)) == len(mains)


def test_ratio_axes_are_unitless_and_divide_by_the_baseline(figures):
    fig = figures["syn-train-ratio-sasrec-naive"]
    time_ax, memory_ax = fig.axes
    for ax in (time_ax, memory_ax):
        assert "sasrec[naive]" in ax.get_ylabel()
        assert not any(unit in ax.get_ylabel() for unit in ("ms", "MiB", "GiB"))
    lines = _data_lines(memory_ax)
    np.testing.assert_allclose(lines["sasrec[naive]"].get_ydata(), 1.0)
    footprint, sasrec_footprint = SYNTHETIC_MODELS["convrec-light"][2], SYNTHETIC_MODELS["sasrec"][2]
    x = np.asarray(lines["convrec-light"].get_xdata(), dtype=float)
    np.testing.assert_allclose(lines["convrec-light"].get_ydata(), (1.2 * footprint(x) + 30) / (1.2 * sasrec_footprint(x) + 30))


def test_breakdown_bars_are_each_parts_share_with_the_total_beside_them(h200_figures):
    frame = read_results(H200)
    fig = h200_figures["h200-train-memory_breakdown"]
    panels = [ax for ax in fig.axes if ax.get_title(loc="left").startswith("L = ")]
    assert [ax.get_title(loc="left") for ax in panels] == ["L = 50", "L = 200", "L = 500"]
    at_200 = panels[1]
    row = frame[(frame["model"] == "sasrec") & (frame["attention"] == "naive") & (frame["mode"] == "train")
                & (frame["seq_len"] == 200)].iloc[0]
    bars = {bar.get_label().split()[0][1:]: bar.patches[0] for bar in at_200.containers
            if bar.get_label().endswith(" sasrec[naive]")}
    parts = ["params_mib", "grads_mib", "optimizer_state_mib", "inputs_mib", "activations_mib"]
    assert list(bars) == parts
    shares = [bars[p].get_width() for p in parts]
    assert sum(shares) == pytest.approx(1.0)
    assert shares[-1] == pytest.approx(row["activations_mib"] / sum(row[p] for p in parts))
    assert format_memory(row["tensor_footprint_mib"]) in [t.get_text() for t in at_200.texts]
    assert [t.get_text() for t in panels[2].texts].count("OOM") == 2  # CosRec and CosRec+ at L = 500


def test_title_names_gpu_batch_mode_and_dtype(figures):
    title = figures["syn-train-time_median_ms"]._suptitle.get_text()
    for part in ("time per step (ms)", "Test GPU 80GB", "batch 8", "train", "float32"):
        assert part in title


def test_figures_are_png_and_svg_and_the_svg_is_the_same_bytes_every_time(frame, tmp_path):
    first = save_figures({"one": build_figures(frame, stem="a")["a-train-time_median_ms"]}, tmp_path / "first")
    second = save_figures({"one": build_figures(frame, stem="a")["a-train-time_median_ms"]}, tmp_path / "second")
    assert sorted(p.name for p in first) == ["one.png", "one.svg"]
    assert first[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = first[1].read_text()
    assert "<svg" in svg[:500] and "<dc:date>" not in svg
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_unknown_baseline_lists_the_variants(frame):
    with pytest.raises(ValueError, match="choose from caser, convrec-light, cosrec, sasrec"):
        build_figures(frame, baseline="bert4rec")


def test_plot_command_draws_beside_the_results_or_where_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a plots/ folder in the working directory must stay untouched
    (tmp_path / "plots").mkdir()
    results = tmp_path / "runs" / "grid.csv"
    results.parent.mkdir()
    synthetic_results().to_csv(results, index=False)
    runner = CliRunner()
    result = runner.invoke(app, ["plot", str(results)])
    assert result.exit_code == 0, result.output
    beside = {p.name for p in (tmp_path / "runs" / "grid-plots").iterdir()}
    assert {"grid-train-time_median_ms.png", "grid-train-memory_breakdown.svg"} <= beside
    assert not any((tmp_path / "plots").iterdir())
    result = runner.invoke(app, ["plot", str(results), "--plots-dir", str(tmp_path / "figs"), "--baseline", "convrec-light"])
    assert result.exit_code == 0, result.output
    assert "grid-train-ratio-convrec-light.png" in {p.name for p in (tmp_path / "figs").iterdir()}
    result = runner.invoke(app, ["plot", str(results), "--plots-dir", str(tmp_path / "figs"), "--baseline", "nope"])
    assert result.exit_code == 2 and "baseline 'nope' is not in the results" in result.output
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("a,b\n1,2\n")
    result = runner.invoke(app, ["plot", str(foreign)])
    assert result.exit_code == 2 and "is not a seqprof results file" in result.output
    assert len(result.output.strip().splitlines()) == 1
