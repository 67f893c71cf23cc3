"""`seqprof report` and `seqprof reproduce`: tables from files with OOM, skipped and error rows,
Markdown, the papers' numbers beside the measured ones, and one-line errors for bad files."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import synthetic_results
from typer.testing import CliRunner

from profiler.analysis.table import analyse
from profiler.cli import app, main
from profiler.present.report import breakdown_table, build_report, markdown_report, to_markdown, verdict_table
from profiler.reproduce.compare import comparison_tables, select_rows
from profiler.reproduce.figure import reproduce_figure
from profiler.reproduce.setups import SETUPS, sweep_request
from profiler.results.store import read_results
from profiler.trackers.timing import MeasurementBudget

H100_GRID = Path(__file__).resolve().parent.parent / "results" / "h100-grid.csv"
runner = CliRunner()


@pytest.fixture()
def results(tmp_path):
    path = tmp_path / "synthetic.csv"
    synthetic_results().to_csv(path, index=False)
    return path


def _cells(table, column):
    index = table.columns.index(column)
    return {row[0]: row[index] for row in table.rows}


def test_verdict_table_gives_each_variant_its_verdicts_and_where_it_stopped(results):
    table = verdict_table(analyse(read_results(results), n_boot=20), "train")
    footprint = _cells(table, "footprint")
    assert footprint["sasrec[naive]"].startswith("quadratic")
    assert footprint["convrec-light"].startswith("linear")
    assert footprint["cosrec"].startswith("quadratic 2.00")
    assert _cells(table, "time")["caser"].startswith("cubic")
    stopped = _cells(table, "stopped")
    assert stopped["cosrec"] == "OOM at L=400" and stopped["caser"] == "error at L=100" and stopped["sasrec[naive]"] == ""


def test_report_has_fits_throughput_and_crossovers(results):
    tables = build_report(analyse(read_results(results), n_boot=20), ["train"])
    titles = [t.title for t in tables]
    assert any(t.startswith("Fits of time per step") for t in titles)
    throughput = next(t for t in tables if t.title.startswith("Achieved TFLOP/s"))
    # sasrec at L=800: (2e6 L + 4e3 L^2) FLOPs over the median step time.
    best = _cells(throughput, "at max L")["sasrec[naive]"]
    assert 0 < float(best) < 1
    crossings = next(t for t in tables if t.title.startswith("Crossovers"))
    assert any(row[3] == "caser" and row[4] == "sasrec[naive]" for row in crossings.rows)


def test_markdown_is_a_table_per_section_with_escaped_cells(results):
    tables = build_report(analyse(read_results(results), n_boot=20), ["train"])
    text = markdown_report(tables, ["results: x"])
    assert text.startswith("# seqprof scaling report")
    verdicts = to_markdown(tables[0]).splitlines()
    assert verdicts[0] == "### Growth with sequence length (train)"
    assert verdicts[2].startswith("| model | family | mode |")
    assert verdicts[3].startswith("| --- |")
    rows = [line for line in verdicts if line.startswith("| cosrec ")]
    assert len(rows) == 1 and rows[0].count("|") == verdicts[2].count("|")


def test_report_command_prints_and_writes_markdown(results, tmp_path):
    markdown = tmp_path / "report.md"
    result = runner.invoke(app, ["report", str(results), "--markdown", str(markdown)])
    assert result.exit_code == 0, result.output
    assert "1 oom" in result.output and "1 error" in result.output and "2 skipped" in result.output
    assert "OOM at L=400" in result.output
    assert "| sasrec[naive] | attention | train |" in markdown.read_text()


def test_report_on_the_h100_grid(tmp_path):
    result = runner.invoke(app, ["report", str(H100_GRID), "--mode", "train", "--markdown", str(tmp_path / "h.md")])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "h.md").read_text().splitlines()
    start = lines.index("### Growth with sequence length (train)")
    header = [c.strip() for c in lines[start + 2].strip("|").split("|")]
    rows = {}
    for line in lines[start + 4:]:
        if not line.startswith("|"):
            break
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        rows[cells["model"]] = cells
    assert len(rows) == 14  # ten models, four of them with two attention backends
    # Materialised attention holds L x L scores: quadratic; the fused kernel and convolutions: linear.
    assert rows["sasrec[naive]"]["footprint"].startswith("quadratic")
    assert rows["sasrec[sdpa]"]["footprint"].startswith("linear")
    assert rows["convrec-hier"]["footprint"].startswith("linear")
    assert rows["convrec-light"]["footprint"].startswith("linear")
    assert rows["caser"]["time"].startswith("cubic")
    assert rows["cosrec"]["stopped"] == "OOM at L=300"


@pytest.mark.parametrize(
    "content, problem",
    [(None, "does not exist"), ("", "is empty"), ("model,mode\nx,y\n", "is not a seqprof results file"),
     ('a,"b\n1', "is corrupted")],
)
def test_bad_results_files_are_one_line_errors(tmp_path, content, problem):
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_text(content)
    for command in (["report", str(path)], ["plot", str(path)], ["reproduce", "convrec", "--from-results", str(path)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, (command, result.output)
        assert problem in result.output and len(result.output.strip().splitlines()) == 1


# --- reproduce ------------------------------------------------------------------------------


def test_convrec_from_the_h100_grid_sets_measured_beside_published(tmp_path):
    result = runner.invoke(app, ["reproduce", "convrec", "--from-results", str(H100_GRID), "--plots-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "3,878" in result.output and "14,280" in result.output  # the paper's ProxyRCA memory
    assert "89.3" in result.output and "202.0" in result.output  # the paper's times, in ms
    assert (tmp_path / "reproduce-convrec-h100-grid.png").exists()
    assert (tmp_path / "reproduce-convrec-h100-grid.svg").exists()


def test_comparison_ratios_are_to_the_own_first_length_and_between_models():
    frame = read_results(H100_GRID)
    setup = SETUPS["convrec"]
    selection = select_rows(setup, frame)
    assert set(selection.rows["attention"]) == {"naive", "none"}  # the authors' materialised attention
    memory, time = comparison_tables(setup, selection)
    rows = {row[0]: row for row in memory.rows}
    proxy = frame[(frame["model"] == "proxyrca") & (frame["attention"] == "naive") & (frame["mode"] == "train")].set_index("seq_len")
    conv = frame[(frame["model"] == "convrec-hier") & (frame["mode"] == "train")].set_index("seq_len")
    cells = dict(zip(memory.columns, rows["500"]))
    assert cells["ProxyRCA measured MiB"] == f"{proxy.loc[500, 'nvml_peak_mib']:,.0f}"
    assert cells["ProxyRCA paper MiB"] == "14,280"
    assert cells["ProxyRCA peak alloc MiB"] == f"{proxy.loc[500, 'peak_allocated_mib']:,.0f}"
    assert cells["ProxyRCA measured / L=50"] == f"{proxy.loc[500, 'nvml_peak_mib'] / proxy.loc[50, 'nvml_peak_mib']:.2f}"
    assert cells["ProxyRCA paper / L=50"] == f"{14280 / 3878:.2f}"
    assert cells["ProxyRCA / ConvRec measured"] == f"{proxy.loc[500, 'nvml_peak_mib'] / conv.loc[500, 'nvml_peak_mib']:.2f}"
    assert cells["ProxyRCA / ConvRec paper"] == f"{14280 / 6096:.2f}"
    time_cells = dict(zip(time.columns, next(r for r in time.rows if r[0] == "50")))
    assert time_cells["ConvRec measured ms"] == f"{conv.loc[50, 'time_median_ms']:,.1f}"
    assert time_cells["ConvRec paper ms"] == "76.0"


def test_lightconv_with_oom_and_error_rows(tmp_path):
    """SASRec runs out of memory at 900 (the paper: 'failed'), ConvRec errors at 600."""
    frame = synthetic_results(lengths=(50, 200, 400, 600, 900), profile="ml-1m", batch_size=128,
                              oom={"sasrec": 900}, errors={"convrec-light": 600})
    path = tmp_path / "light.csv"
    frame.to_csv(path, index=False)
    setup = SETUPS["lightconv"]
    selection = select_rows(setup, read_results(path))
    assert selection.comparable
    memory, _ = comparison_tables(setup, selection)
    rows = {row[0]: dict(zip(memory.columns, row)) for row in memory.rows}
    assert rows["900"]["SASRec measured GiB"] == "OOM" and rows["900"]["SASRec paper GiB"] == "failed"
    assert rows["600"]["ConvRec measured GiB"] == "error"
    assert rows["900"]["SASRec / ConvRec measured"] == ""
    figure = reproduce_figure(setup, selection)
    (ax,) = figure.axes
    bars = {container.get_label(): container for container in ax.containers}
    assert set(bars) == {"SASRec measured", "SASRec paper", "ConvRec measured", "ConvRec paper"}
    paper = [bar.get_height() for bar in bars["ConvRec paper"]]
    assert paper == [0.9, 1.3, 2.8, 4.0, 7.0]
    texts = [t.get_text() for t in ax.texts]
    assert "failed" in texts and "OOM" in texts and "error" in texts
    result = runner.invoke(app, ["reproduce", "lightconv", "--from-results", str(path), "--plots-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "OOM" in result.output and "failed" in result.output


def test_cpu_results_are_labelled_not_comparable(tmp_path):
    frame = synthetic_results(lengths=(16, 32, 64, 128), batch_size=4, profile="tiny", oom={}, errors={})
    frame["device"], frame["device_name"] = "cpu", "CPU (x86_64, 2 cores)"
    frame[["peak_allocated_mib", "nvml_peak_mib"]] = np.nan
    selection = select_rows(SETUPS["lightconv"], frame)
    assert not selection.comparable
    memory, _ = comparison_tables(SETUPS["lightconv"], selection)
    assert "tensor_footprint_mib" in memory.title
    assert any("NOT comparable" in note for note in memory.notes)
    # Ratios go to the shortest measured length when L=50 was not measured.
    assert "SASRec measured / L=16" in memory.columns
    figure = reproduce_figure(SETUPS["lightconv"], selection)
    assert "measured on the CPU" in figure._suptitle.get_text()
    # Only shapes compare: measured and published are both drawn as growth from their first length.
    (ax,) = figure.axes
    assert "÷ its value at the shortest length" in ax.get_ylabel() and "GiB" not in ax.get_ylabel()
    paper = next(c for c in ax.containers if c.get_label() == "ConvRec paper")
    assert [bar.get_height() for bar in paper] == pytest.approx([1.0, 1.3 / 0.9, 2.8 / 0.9, 4.0 / 0.9, 7.0 / 0.9])


def test_missing_model_is_a_clear_error(results):
    result = runner.invoke(app, ["reproduce", "convrec", "--from-results", str(results)])
    assert result.exit_code == 2
    assert "no train rows of proxyrca, convrec-hier" in result.output


def test_reproduce_falls_back_to_a_labelled_cpu_version_without_a_gpu(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    out = tmp_path / "runs" / "light.csv"
    result = runner.invoke(app, ["reproduce", "lightconv", "--out", str(out), "--lengths", "8,16", "--profile", "tiny",
                                 "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "Running on the CPU (no CUDA GPU in use)" in result.output and "NOT comparable" in result.output
    frame = read_results(out)
    assert set(frame["device"]) == {"cpu"} and set(frame["status"]) == {"ok"}
    assert sorted(set(frame["seq_len"])) == [8, 16] and set(frame["model"]) == {"sasrec", "convrec-light"}
    # The figure beside the results, its title saying what the numbers are.
    assert (tmp_path / "runs" / "light-plots" / "reproduce-lightconv-light.png").exists()
    result = runner.invoke(app, ["reproduce", "lightconv", "--from-results", "x.csv", "--lengths", "50"])
    assert result.exit_code == 2 and "drop --lengths" in result.output
    assert main(["reproduce", "transformer"]) == 2
    assert capsys.readouterr().err == (
        "seqprof: error: Invalid value for 'SETUP': unknown setup 'transformer'; choose from convrec, lightconv, hstu, "
        "lrurec\n")


def test_sweep_request_follows_the_paper_on_a_gpu_and_shrinks_on_the_cpu(tmp_path):
    budget = MeasurementBudget()
    gpu = sweep_request(SETUPS["convrec"], "cuda", tmp_path / "r.csv", budget)
    assert (gpu.models, gpu.lengths, gpu.batch_size, gpu.profile, gpu.modes, gpu.attentions) == (
        ["proxyrca", "convrec-hier"], [50, 100, 200, 300, 400, 500], 128, "beauty", ["train"], ["naive"])
    cpu = sweep_request(SETUPS["lightconv"], "cpu", tmp_path / "r.csv", budget)
    assert (cpu.lengths, cpu.batch_size, cpu.profile) == ([50, 200, 400, 600], 8, "ml-1m")
    assert sweep_request(SETUPS["convrec"], "cpu", tmp_path / "r.csv", budget).lengths == [50, 100, 200]
    small = sweep_request(SETUPS["lightconv"], "cpu", tmp_path / "r.csv", budget, batch_size=2, lengths=[16, 8], profile="tiny")
    assert (small.lengths, small.batch_size, small.profile) == ([8, 16], 2, "tiny")
    small.validate()


def _ratio_rows(setup_name: str, lengths: tuple[int, ...]):
    """Synthetic GPU rows for a time-ratio setup: the first model from the quadratic synthetic
    SASRec (given the setup's backend), the second from the linear synthetic ConvRec, renamed."""
    setup = SETUPS[setup_name]
    frame = synthetic_results(lengths=lengths, profile=setup.profile, batch_size=setup.batch_size, oom={}, errors={})
    frame["mode"] = setup.mode
    first, second = setup.models
    frame = frame[frame["model"].isin(["sasrec", "convrec-light"])].copy()
    frame.loc[frame["model"] == "sasrec", "attention"] = setup.attention
    frame.loc[frame["model"] == "convrec-light", "model"] = second
    return setup, frame.set_index(["model", "seq_len"], drop=False)


@pytest.mark.parametrize("name", ["hstu", "lrurec"])
def test_time_ratio_setups_are_listed_with_their_published_source(name):
    setup = SETUPS[name]
    assert setup.source.startswith("section ") and setup.time_ratio and not setup.memory
    assert all(0 < low <= high for low, high in setup.time_ratio.values())
    assert set(setup.time_ratio) <= set(setup.lengths)
    assert any("expected to be" in note for note in setup.notes)  # measured is never forced to agree
    help_text = " ".join(runner.invoke(app, ["reproduce", "--help"]).output.split())
    assert name in help_text and setup.source.split(",")[0] in help_text


def test_hstu_table_sets_the_measured_ratio_beside_the_published_range():
    setup, frame = _ratio_rows("hstu", (512, 1024, 2048, 4096, 8192))
    selection = select_rows(setup, frame.reset_index(drop=True))
    assert selection.comparable
    assert set(selection.rows["attention"]) == {"sdpa", "none"}  # the paper's fused Transformer
    memory, time = comparison_tables(setup, selection)
    assert "training" in time.title and any("no memory" in note for note in memory.notes)
    rows = {row[0]: dict(zip(time.columns, row)) for row in time.rows}
    sasrec, hstu = frame.loc[("sasrec", 8192), "time_median_ms"], frame.loc[("hstu", 8192), "time_median_ms"]
    assert rows["8192"]["SASRec (sdpa) / HSTU measured"] == f"{sasrec / hstu:.2f}"
    assert rows["8192"]["SASRec (sdpa) / HSTU paper"] == "5.30-15.20"
    assert rows["512"]["SASRec (sdpa) / HSTU paper"] == ""
    assert "SASRec (sdpa) paper ms" not in time.columns  # the paper states the ratio only
    figure = reproduce_figure(setup, selection)
    ratio_ax = figure.axes[2]
    (line,) = [l for l in ratio_ax.get_lines() if l.get_label() == "measured"]
    assert list(line.get_xdata()) == [512, 1024, 2048, 4096, 8192]
    assert line.get_ydata()[-1] == pytest.approx(sasrec / hstu)
    # A measured ratio a decade or more from the published one stays visible: the axis turns logarithmic.
    wide = frame.reset_index(drop=True)
    wide.loc[wide["model"] == "hstu", "time_median_ms"] *= 1000
    wide_axis = reproduce_figure(setup, select_rows(setup, wide)).axes[2]
    assert wide_axis.get_yscale() == "log"


def test_lrurec_compares_inference_and_its_single_published_ratio():
    setup, frame = _ratio_rows("lrurec", (50, 100, 200, 400, 800))
    # The training rows of the same models are left out: the setup compares inference.
    selection = select_rows(setup, pd.concat([frame, frame.assign(mode="train", time_median_ms=1.0)], ignore_index=True))
    assert set(selection.rows["mode"]) == {"infer"} and set(selection.rows["attention"]) == {"naive", "none"}
    _, time = comparison_tables(setup, selection)
    assert "inference" in time.title
    rows = {row[0]: dict(zip(time.columns, row)) for row in time.rows}
    assert rows["50"]["SASRec / LRURec paper"] == "7.30" and rows["800"]["SASRec / LRURec paper"] == ""
    sasrec, lrurec = frame.loc[("sasrec", 50), "time_median_ms"], frame.loc[("lrurec", 50), "time_median_ms"]
    assert rows["50"]["SASRec / LRURec measured"] == f"{sasrec / lrurec:.2f}"


def test_time_ratio_setups_sweep_their_mode_and_backend_and_shrink_on_the_cpu(tmp_path):
    budget = MeasurementBudget()
    hstu = sweep_request(SETUPS["hstu"], "cuda", tmp_path / "r.csv", budget)
    assert (hstu.models, hstu.lengths, hstu.batch_size, hstu.profile, hstu.modes, hstu.attentions) == (
        ["sasrec", "hstu"], [512, 1024, 2048, 4096, 8192], 8, "ml-1m", ["train"], ["sdpa"])
    override = sweep_request(SETUPS["hstu"], "cuda", tmp_path / "r.csv", budget, lengths=[8192, 2048, 4096])
    assert override.lengths == [2048, 4096, 8192]
    cpu = sweep_request(SETUPS["hstu"], "cpu", tmp_path / "r.csv", budget)
    assert (cpu.lengths, cpu.batch_size) == ([512, 1024], 8)
    lrurec = sweep_request(SETUPS["lrurec"], "cuda", tmp_path / "r.csv", budget)
    assert (lrurec.models, lrurec.lengths, lrurec.batch_size, lrurec.modes, lrurec.attentions) == (
        ["sasrec", "lrurec"], [50, 100, 200, 400, 800], 128, ["infer"], ["naive"])
    lrurec.validate()


def test_hstu_falls_back_to_a_small_cpu_version_end_to_end(monkeypatch, tmp_path):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    out = tmp_path / "hstu.csv"
    result = runner.invoke(app, ["reproduce", "hstu", "--out", str(out), "--lengths", "8,16", "--profile", "tiny",
                                 "--batch-size", "2", "--min-reps", "3", "--max-reps", "3", "--max-warmup", "2"])
    assert result.exit_code == 0, result.output
    assert "NOT comparable" in result.output and "5.30-15.20" in result.output
    frame = read_results(out)
    assert set(frame["status"]) == {"ok"} and set(frame["mode"]) == {"train"}
    # A paper's long setup takes the sweep's budget options: exactly three timed steps a point.
    assert set(frame["reps"]) == {3} and (frame["warmup_steps"] <= 2).all()
    budget = json.loads(Path(f"{out}.meta.json").read_text())["runs"][-1]["budget"]
    assert (budget["min_reps"], budget["max_reps"], budget["max_warmup_steps"]) == (3, 3, 2)
    result = runner.invoke(app, ["reproduce", "hstu", "--from-results", str(out), "--time-budget-s", "1"])
    assert result.exit_code == 2 and "drop --time-budget-s" in result.output
    assert dict(zip(frame["model"], frame["attention"])) == {"sasrec": "sdpa", "hstu": "none"}
    assert (tmp_path / "hstu-plots" / "reproduce-hstu-hstu.png").exists()


def test_the_breakdown_names_each_part_of_the_footprint_and_the_largest():
    frame = read_results("results/h200-default-run2.csv")
    table = breakdown_table(analyse(frame, n_boot=0), "train")
    rows = {row[0]: row for row in table.rows}
    assert rows["caser"][-1].startswith("optimizer") and rows["sasrec[naive]"][-1].startswith("activations")
    total = sum(float(v.replace(",", "")) for v in rows["sasrec[sdpa]"][3:8])
    assert abs(total - float(rows["sasrec[sdpa]"][8].replace(",", ""))) < 0.5


def test_the_throughput_table_gives_the_fraction_of_peak_and_the_bound_at_the_longest_length(tmp_path):
    frame = synthetic_results()
    sasrec, light = frame["model"] == "sasrec", frame["model"] == "convrec-light"
    longest = frame["seq_len"] == frame.loc[sasrec, "seq_len"].max()
    frame.loc[sasrec, ["peak_fraction", "bandwidth_fraction", "memory_bound"]] = [0.01, 0.5, True]
    frame.loc[sasrec & longest, ["peak_fraction", "bandwidth_fraction", "memory_bound"]] = [0.42, 0.031, False]
    frame.loc[light & longest, ["peak_fraction", "bandwidth_fraction", "memory_bound"]] = [0.0035, 0.8, True]
    path = tmp_path / "peaks.csv"
    frame.to_csv(path, index=False)
    tables = build_report(analyse(read_results(path), n_boot=0), ["train"])
    throughput = next(t for t in tables if t.title.startswith("Achieved TFLOP/s"))
    assert _cells(throughput, "% peak at max L") == {"sasrec[naive]": "42%", "convrec-light": "0.35%", "cosrec": "-",
                                                     "caser": "-"}
    assert _cells(throughput, "% bandwidth at max L")["sasrec[naive]"] == "3.1%"
    assert _cells(throughput, "bound at max L") == {"sasrec[naive]": "compute", "convrec-light": "memory", "cosrec": "-",
                                                    "caser": "-"}


def test_a_file_from_before_the_peak_columns_reports_them_blank(tmp_path):
    path = tmp_path / "old.csv"
    columns = ["peak_tflops", "peak_bandwidth_gib_s", "peak_fraction", "bandwidth_fraction", "memory_bound",
               "moved_mib_per_step", "flops_per_byte", "peak_rate_s"]
    synthetic_results().drop(columns=columns).to_csv(path, index=False)
    throughput = next(t for t in build_report(analyse(read_results(path), n_boot=0), ["train"])
                      if t.title.startswith("Achieved TFLOP/s"))
    assert set(_cells(throughput, "% peak at max L").values()) == {"-"}
    assert set(_cells(throughput, "bound at max L").values()) == {"-"}
    result = runner.invoke(app, ["report", str(path)])
    assert result.exit_code == 0, result.output
    assert "Achieved TFLOP/s" in result.output
