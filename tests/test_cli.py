"""The command line: happy paths, help, defaults, and every bad input, each a one-line error with
exit code 2."""
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import typer
from helpers import FAST_FLAGS
from rich.console import Console
from typer.testing import CliRunner

from models.profiles import PROFILES
from models.registry import REGISTRY
from profiler.analysis.fit import growth_verdict
from profiler.cli import app, common, main
from profiler.cli.sweep import resume_command
from profiler.present.display import SweepProgress
from profiler.results.schema import PointSpec
from profiler.run.sweep import CPU_DEFAULTS
from profiler.run.workload import build_workload, step_costs

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args))


def test_the_closing_line_counts_each_outcome_where_a_point_is_not_ok(tmp_path, monkeypatch):
    from profiler.run.faults import FAULT_ENV

    monkeypatch.setenv(FAULT_ENV, "sasrec[naive] train L=12=oom")
    result = invoke("sweep", "--lengths", "8,12,16", "--models", "sasrec", "--out", str(tmp_path / "r.csv"), *FAST_FLAGS)
    assert result.exit_code == 0, result.output
    assert "3 points measured in " in result.output and " s (1 ok, 1 oom, 1 skipped); results:" in result.output


def test_sweep_writes_one_row_per_point_and_a_summary(tmp_path):
    out = tmp_path / "r.csv"
    previous = os.umask(0o022)
    try:
        result = invoke("sweep", "--lengths", "8,16", "--models", "sasrec,convrec-light", "--mode", "both",
                        "--attention", "naive,sdpa", "--out", str(out), *FAST_FLAGS)
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    # Readable by the group like the figures beside them, and no lock file left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.csv.meta.json"]
    assert {(tmp_path / name).stat().st_mode & 0o777 for name in ("r.csv", "r.csv.meta.json")} == {0o644}
    frame = pd.read_csv(out)
    # sasrec x 2 backends + convrec-light, x 2 modes, x 2 lengths
    assert len(frame) == 12
    assert set(frame["status"]) == {"ok"}
    assert set(frame.loc[frame["model"] == "sasrec", "attention"]) == {"naive", "sdpa"}
    assert set(frame.loc[frame["model"] == "convrec-light", "attention"]) == {"none"}
    assert (frame["device"] == "cpu").all()
    assert (frame["time_median_ms"] > 0).all() and (frame["tensor_footprint_mib"] > 0).all()
    assert "Running on the CPU" in result.output
    assert "L=16" in result.output  # the summary table's columns
    assert (tmp_path / "r.csv.meta.json").exists()


def test_sweep_draws_its_figures_beside_its_results_or_where_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the working directory's plots/ must stay as it is
    flags = [f for f in FAST_FLAGS if f != "--no-plot"]
    out = tmp_path / "runs" / "r.csv"
    result = invoke("sweep", "--lengths", "8", "--models", "convrec-light", "--out", str(out), *flags)
    assert result.exit_code == 0, result.output
    assert {"r-train-time_median_ms.png", "r-train-tensor_footprint_mib.svg", "r-train-memory_breakdown.png"} <= {
        p.name for p in (tmp_path / "runs" / "r-plots").iterdir()}
    assert not (tmp_path / "plots").exists()
    result = invoke("sweep", "--lengths", "8", "--models", "convrec-light", "--out", str(tmp_path / "s.csv"),
                    "--plots-dir", str(tmp_path / "figs"), *flags)
    assert result.exit_code == 0, result.output
    assert "s-train-time_median_ms.png" in {p.name for p in (tmp_path / "figs").iterdir()}


def _unwrapped(text: str) -> str:
    """Help text as one line: click wraps at spaces and after hyphens."""
    return re.sub(r"-\s+", "-", " ".join(text.split()))


@pytest.mark.parametrize("command", [[], ["sweep"], ["report"], ["plot"], ["reproduce"], ["models"], ["env"]])
def test_help_fits_80_columns_and_shows_defaults(command):
    result = runner.invoke(app, [*command, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    # Plain text, and nothing swallowed: "Models, comma-separated ." was "[all]" read as markup.
    assert "╭" not in result.output and not re.search(r"\S \.(\s|$)", result.output)


def test_sweep_help_lists_models_profiles_and_each_devices_default():
    text = _unwrapped(runner.invoke(app, ["sweep", "--help"], terminal_width=80).output)
    assert f"Models, comma-separated: {', '.join(REGISTRY)}. [default: (all)]" in text
    assert ", ".join(PROFILES) in text
    assert "[default: (GPU 128; CPU 4)]" in text  # --batch-size
    assert "(GPU each model's own; CPU tiny)" in text  # --profile
    assert "CPU 16,32,64,128" in text and "(GPU both; CPU train)" in text


def test_the_default_cpu_sweep_is_the_small_grid_that_shows_quadratic_attention(monkeypatch, tmp_path):
    requests = []

    def capture(request, cpu_notice, store=None):
        requests.append(request)
        raise typer.Exit(0)

    monkeypatch.setattr("profiler.cli.sweep.measure_with_progress", capture)
    assert invoke("sweep", "--device", "cpu", "--out", str(tmp_path / "r.csv")).exit_code == 0
    [request] = requests
    assert (request.lengths, request.batch_size, request.profile, request.modes, request.attentions) == (
        [16, 32, 64, 128], 4, "tiny", ["train"], ["naive"])
    assert request.models == list(REGISTRY)
    # What the defaults are for: the tensor footprint (device-independent) of materialised attention
    # reads quadratic over them, a convolution's linear.
    lengths = list(CPU_DEFAULTS.lengths)
    for model, attention, verdict in (("sasrec", "naive", "quadratic"), ("convrec-light", None, "linear")):
        footprints = [step_costs(build_workload(model, attention, "train", n, CPU_DEFAULTS.batch_size, CPU_DEFAULTS.profile,
                                                "cpu")).tensor_footprint_mib for n in lengths]
        assert growth_verdict(lengths, footprints) == verdict, (model, footprints)


def test_models_table_reads_at_100_columns(monkeypatch):
    monkeypatch.setattr(common.out, "width", 100)
    result = invoke("models")
    assert result.exit_code == 0, result.output
    assert max(len(line.rstrip()) for line in result.output.splitlines()) <= 100
    assert "…" not in result.output
    text = " ".join(result.output.split())
    for spec in REGISTRY.values():
        assert spec.name in text and " ".join(spec.paper.split()) in text and " ".join(spec.code.split()) in text


def test_point_lines_keep_their_columns_whatever_the_label():
    buffer = io.StringIO()
    progress = SweepProgress(Console(file=buffer, width=200, color_system=None), label_width=len("convrec-light train L=128"))
    row = {"status": "ok", "time_median_ms": 12.5, "tensor_footprint_mib": 3.2, "time_spread": 0.04, "time_clock": "perf-counter"}
    points = [PointSpec("sasrec", 16, "train", 4, "tiny", "naive", "cpu"),
              PointSpec("convrec-light", 128, "train", 4, "tiny", "none", "cpu")]
    with progress:
        for index, point in enumerate(points):
            progress.on_start(index, 10, point)
            progress.on_result(index, 10, point, {**row, "time_spread": 31.2 if index else 0.04})
    lines = [line for line in buffer.getvalue().splitlines() if line.startswith("[")]
    assert len(lines) == 2
    assert len({line.index(" ok ") for line in lines}) == 1 and len({line.index(" ms ") for line in lines}) == 1
    assert len({len(line.rstrip()) for line in lines}) == 1


def test_models_lists_every_registered_model_with_its_parameter_count():
    result = invoke("models")
    assert result.exit_code == 0, result.output
    for name in REGISTRY:
        assert name in result.output
    assert "2,898,150" in result.output  # SASRec at the Beauty profile, L 50, d 50 (pmixer's count)


def test_env_names_torch_and_the_commit():
    result = invoke("env", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "torch" in result.output and "git_commit" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lengths", "50,,200"], "not a comma-separated list"),
        (["--lengths", ""], "not a comma-separated list"),
        (["--lengths", "50,abc"], "not an integer length"),
        (["--lengths", "0,50"], "lengths must be positive"),
        (["--lengths", "-5"], "lengths must be positive"),
        (["--lengths", "50,50"], "repeats 50"),
        (["--models", "gpt4rec"], "unknown model 'gpt4rec'; choose from"),
        (["--batch-size", "0"], "batch-size"),
        (["--mode", "fly"], "unknown mode 'fly'"),
        (["--attention", "flash"], "unknown attention backend 'flash'"),
        (["--profile", "imdb"], "unknown profile 'imdb'"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--min-reps", "9", "--max-reps", "3"], "larger than --max-reps"),
        (["--spare-workers", "9"], "spare-workers"),
        (["--spare-workers", "-1"], "spare-workers"),
        (["--resume"], "--resume needs --out"),
    ],
)
def test_bad_input_is_a_clear_error_with_exit_code_2(args, message):
    result = invoke("sweep", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_cuda_graphs_on_a_cpu_sweep_is_a_one_line_error(tmp_path):
    result = invoke("sweep", "--models", "sasrec", "--lengths", "8", "--execution", "cuda-graphs",
                    "--out", str(tmp_path / "r.csv"), *FAST_FLAGS)
    assert result.exit_code == 2
    assert result.output.strip() == "seqprof: error: --execution cuda-graphs needs a CUDA GPU; this sweep runs on the CPU"
    assert list(tmp_path.iterdir()) == []


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    result = invoke("sweep", "--device", "cuda", "--lengths", "8")
    assert result.exit_code == 2
    assert "no CUDA GPU is available" in result.output


def test_unwritable_output_folder_is_a_clear_error(tmp_path, monkeypatch):
    # Permission bits do not bind root, so the store's write check is made to see a read-only folder.
    monkeypatch.setattr("profiler.results.store.os.access", lambda path, mode: False)
    result = invoke("sweep", "--lengths", "8", "--models", "sasrec", "--out", str(tmp_path / "r.csv"), *FAST_FLAGS)
    assert result.exit_code == 2
    assert "cannot write results to" in result.output and "permission denied" in result.output
    assert not (tmp_path / "r.csv").exists()


def test_output_under_a_file_is_a_clear_error(tmp_path):
    a_file = tmp_path / "plain"
    a_file.write_text("x")
    result = invoke("sweep", "--lengths", "8", "--models", "sasrec", "--out", str(a_file / "r.csv"), *FAST_FLAGS)
    assert result.exit_code == 2
    assert "cannot create folder" in result.output


def test_existing_results_are_never_overwritten(tmp_path):
    out = tmp_path / "r.csv"
    out.write_text("precious\n")
    result = invoke("sweep", "--lengths", "8", "--models", "sasrec", "--out", str(out), *FAST_FLAGS)
    assert result.exit_code == 2
    assert "already exists" in result.output
    assert out.read_text() == "precious\n"


@pytest.mark.parametrize(
    "content, problem",
    [
        ("", "is empty"),
        ("a,b,c\n1,2,3\n", "not a seqprof results file"),
        ('model,"unterminated\n', "corrupted"),
    ],
)
def test_corrupted_results_given_to_resume_are_a_clear_error(tmp_path, content, problem):
    out = tmp_path / "r.csv"
    out.write_text(content)
    result = invoke("sweep", "--lengths", "8", "--models", "sasrec", "--out", str(out), "--resume", *FAST_FLAGS)
    assert result.exit_code == 2
    assert problem in result.output and str(out) in result.output
    assert out.read_text() == content  # nothing touched


def test_console_script_prints_one_line_errors():
    proc = subprocess.run(
        [sys.executable, "-m", "profiler.cli", "sweep", "--lengths", "5,x"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["seqprof: error: Invalid value for '--lengths': 'x' in '5,x' is not an integer length"]


def test_resume_command_replaces_out_and_adds_resume():
    argv = ["sweep", "--lengths", "50,200", "--out", "old.csv", "--resume"]
    assert resume_command(argv, "new.csv") == "seqprof sweep --lengths 50,200 --out new.csv --resume"


def test_resume_command_is_quoted_so_that_it_pastes_into_a_shell():
    argv = ["sweep", "--models", "sasrec, convrec-light", "--lengths=50,200", "--out", "old.csv"]
    command = resume_command(argv, Path("my results/it's $HOME.csv"))
    assert shlex.split(command) == ["seqprof", "sweep", "--models", "sasrec, convrec-light", "--lengths=50,200",
                                    "--out", "my results/it's $HOME.csv", "--resume"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--time-budget-s", "inf"], "'--time-budget-s': 'inf' is not a finite decimal number"),
        (["--time-budget-s", "1e999"], "'--time-budget-s': inf is not a finite number"),
        (["--target-ci", "nan"], "'--target-ci': 'nan' is not a finite decimal number"),
        (["--point-timeout-s", "Infinity"], "'--point-timeout-s': 'Infinity' is not a finite decimal number"),
        (["--point-timeout-s", "0.5"], "'--point-timeout-s': 0.5 is below 1"),
        (["--time-budget-s", "1_0"], "'--time-budget-s': '1_0' is not a finite decimal number"),
        (["--batch-size", str(10**20)], f"'--batch-size': {10**20} is not in the range 1..1048576"),
        (["--batch-size", "1_0"], "'--batch-size': '1_0' is not a decimal integer"),
        (["--batch-size", "٤"], "'--batch-size': '٤' is not a decimal integer"),
        (["--seed", "-1"], "'--seed': -1 is not in the range 0..4294967295"),
        (["--seed", str(2**64)], f"'--seed': {2**64} is not in the range 0..4294967295"),
        (["--min-reps", "2.0"], "'--min-reps': '2.0' is not a decimal integer"),
        (["--warmup", str(10**9)], f"'--warmup': {10**9} is not in the range 1..10000"),
        (["--threads", "1e6"], "'--threads': '1e6' is not a decimal integer"),
        (["--lengths", "1_0"], "'--lengths': '1_0' in '1_0' is not an integer length"),
        (["--lengths", "8,٥٠"], "'--lengths': '٥٠' in '8,٥٠' is not an integer length"),
        (["--lengths", "8,\uff15\uff10"], "'--lengths': '\uff15\uff10' in '8,\uff15\uff10' is not an integer length"),
        (["--lengths", "8,08"], "'--lengths': '8,08' repeats 8"),
        (["--lengths", str(2**21)], f"'--lengths': lengths must be at most {2**20}; got {2**21}"),
    ],
)
def test_absurd_option_values_are_one_line_before_anything_is_measured(tmp_path, capsys, args, message):
    out = tmp_path / "r.csv"
    assert main(["sweep", "--models", "sasrec", "--lengths", "8", *FAST_FLAGS, "--out", str(out), *args]) == 2
    assert capsys.readouterr().err == f"seqprof: error: Invalid value for {message}\n"
    assert list(tmp_path.iterdir()) == []


def test_reproduce_reads_its_batch_size_as_strictly(tmp_path, capsys):
    args = ["reproduce", "lightconv", "--device", "cpu", "--out", str(tmp_path / "r.csv"), "--batch-size", "1_0"]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        "seqprof: error: Invalid value for '--batch-size': '1_0' is not a decimal integer\n")
    assert list(tmp_path.iterdir()) == []


def test_lengths_below_a_models_minimum_are_a_clear_error(tmp_path):
    result = invoke("sweep", "--models", "cosrec", "--lengths", "3,8", "--out", str(tmp_path / "r.csv"), *FAST_FLAGS)
    assert result.exit_code == 2
    assert "model 'cosrec' needs lengths of at least 5; got 3" in result.output
    assert not (tmp_path / "r.csv").exists()


def test_models_needing_item_features_refuse_a_profile_without_them(tmp_path):
    result = invoke("sweep", "--models", "proxyrca", "--lengths", "8", "--out", str(tmp_path / "r.csv"),
                    *FAST_FLAGS, "--profile", "ml-1m")
    assert result.exit_code == 2
    assert "model 'proxyrca' needs item features; profile 'ml-1m' has none" in result.output


def test_every_registered_model_has_its_row_in_the_models_readme():
    """The facts `seqprof models` points to: one row per model with its family and default profile."""
    readme = (Path(__file__).resolve().parent.parent / "models" / "README.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): [c.strip() for c in line.split("|")[1:-1]]
            for line in readme.splitlines() if line.startswith("| `")}
    assert sorted(rows) == sorted(REGISTRY)
    for name, spec in REGISTRY.items():
        assert rows[name][1] == spec.family and rows[name][4] == spec.default_profile, name


def test_every_option_is_named_in_lower_case_kebab():
    # Some typer releases (0.27) took an option's metavar for its name where it spelled the
    # parameter's name in capitals ("--MODE"); the names are declared where that could happen.
    for name, command in typer.main.get_command(app).commands.items():
        for param in command.params:
            for opt in param.opts + param.secondary_opts:
                if opt.startswith("--"):
                    assert re.fullmatch(r"--[a-z0-9]+(-[a-z0-9]+)*", opt), f"{name}: {opt}"
