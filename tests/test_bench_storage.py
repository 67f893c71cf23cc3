"""The benchmarks' baselines, one folder per GPU model, and `make bench-compare` refusing in one line
where there is no baseline to compare with."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from profiler.bench import storage

ROOT = Path(__file__).resolve().parent.parent
H100 = "NVIDIA H100 80GB HBM3"


def test_a_gpu_name_gives_its_folder():
    assert storage.gpu_slug(H100) == "nvidia-h100-80gb-hbm3"
    assert storage.benchmark_dir("NVIDIA H200", Path("r")) == Path("r/nvidia-h200")


def test_the_committed_h100_baseline_is_in_the_h100_folder():
    folder = storage.folder_for(H100, ROOT / storage.BENCHMARKS_DIR, need_baseline=True)
    assert folder == ROOT / "results/benchmarks/nvidia-h100-80gb-hbm3"
    # pytest-benchmark compares with the latest saved run: the baseline of the current tree
    assert [p.name for p in storage.saved_runs(folder)] == ["0001_h100.json", "0002_baseline.json"]
    assert not list((ROOT / storage.BENCHMARKS_DIR).glob("*.json"))  # nothing left outside a GPU's folder


def test_no_gpu_or_no_baseline_is_one_line_that_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(storage, "visible_gpu", lambda: None)
    assert storage.main(["--root", str(tmp_path)]) == 1
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith("seqprof bench: no CUDA GPU here") and "on a GPU machine" in line

    monkeypatch.setattr(storage, "visible_gpu", lambda: "NVIDIA H200")
    assert storage.main(["--root", str(tmp_path)]) == 0  # `make bench` may save into a new folder
    assert capsys.readouterr().out == f"{tmp_path / 'nvidia-h200'}\n"
    assert storage.main(["--root", str(tmp_path), "--baseline"]) == 1
    [line] = capsys.readouterr().out.splitlines()
    assert line == (f"seqprof bench: no baseline for NVIDIA H200 in {tmp_path / 'nvidia-h200'}/ (no saved times and no "
                    "memory-baseline.json): run `make bench` on this GPU first to save one, then `make bench-compare`")

    folder = tmp_path / "nvidia-h200"
    (folder / "Linux-CPython-3.12-64bit").mkdir(parents=True)
    (folder / "Linux-CPython-3.12-64bit" / "0001_baseline.json").write_text("{}")
    assert storage.main(["--root", str(tmp_path), "--baseline"]) == 1
    assert "(no memory-baseline.json)" in capsys.readouterr().out
    (folder / storage.MEMORY_BASELINE).write_text("{}")
    assert storage.main(["--root", str(tmp_path), "--baseline"]) == 0
    assert capsys.readouterr().out == f"{folder}\n"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target", ["bench", "bench-compare"])
def test_make_stops_with_that_one_line_and_runs_nothing(tmp_path, target):
    # A stand-in python that answers as profiler.bench.storage does without a baseline, and would
    # leave a mark if make went on to run the benchmarks with it.
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nif [ "$2" = profiler.bench.storage ]; then echo "seqprof bench: no baseline"; exit 1; fi\n'
                      f'touch {tmp_path}/ran\n')
    python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    proc = subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed", target, f"PYTHON={python}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode != 0
    assert proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert "seqprof bench: no baseline" in line
    assert not (tmp_path / "ran").exists()
