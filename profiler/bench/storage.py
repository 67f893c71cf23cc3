"""Where the GPU benchmarks keep their baselines: one folder per GPU model.

A baseline belongs to the GPU it was measured on: an H200's times compared with an H100's would
fail or pass for the wrong reason. So `make bench` saves, and `make bench-compare` compares with,
``results/benchmarks/<gpu-name-slug>/`` (``nvidia-h100-80gb-hbm3/``, ``nvidia-h200/``) of the GPU
the run sees: pytest-benchmark's saved runs (``<machine>/NNNN_<name>.json``, its own layout) and
the memory gate's ``memory-baseline.json``.

``python -m profiler.bench.storage [--baseline]`` prints that folder, for the Makefile. Without a
GPU, or with ``--baseline`` and no saved times or memory in the folder, it prints instead one line
saying what to do and exits 1. The line goes to stdout, so the Makefile can show it as it is.
"""
import argparse
import re
import sys
from pathlib import Path

BENCHMARKS_DIR = Path("results/benchmarks")
MEMORY_BASELINE = "memory-baseline.json"


class NoBaseline(Exception):
    """No benchmark folder can be used here; the message says what to do."""


def gpu_slug(device_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")
    if not slug:
        raise ValueError(f"GPU name {device_name!r} gives no folder name")
    return slug


def benchmark_dir(device_name: str, root: Path = BENCHMARKS_DIR) -> Path:
    return Path(root) / gpu_slug(device_name)


def saved_runs(folder: Path) -> list[Path]:
    """pytest-benchmark's saved runs in ``folder``: ``<machine>/NNNN_<name>.json``."""
    return sorted(p for p in Path(folder).glob("*/*.json") if re.fullmatch(r"\d{4}_.+\.json", p.name))


def visible_gpu() -> str | None:
    """The name of the GPU this process would benchmark, or None without one."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def default_memory_baseline(root: Path = BENCHMARKS_DIR) -> Path:
    """The memory gate's baseline when none is named: the visible GPU's, or ``cpu/`` without one
    (the suite's CPU benchmark reports memory too)."""
    return benchmark_dir(visible_gpu() or "cpu", root) / MEMORY_BASELINE


def folder_for(device_name: str | None, root: Path = BENCHMARKS_DIR, need_baseline: bool = False) -> Path:
    """The benchmark folder of ``device_name``; raises NoBaseline where there is nothing to use."""
    if device_name is None:
        raise NoBaseline("no CUDA GPU here, and the benchmarks time a GPU: run `make bench` and "
                         "`make bench-compare` on a GPU machine (`make test` runs the CPU guards)")
    folder = benchmark_dir(device_name, root)
    if need_baseline:
        missing = [what for what, present in (("saved times", saved_runs(folder)),
                                              (MEMORY_BASELINE, (folder / MEMORY_BASELINE).is_file())) if not present]
        if missing:
            raise NoBaseline(f"no baseline for {device_name} in {folder}/ (no {' and no '.join(missing)}): "
                             "run `make bench` on this GPU first to save one, then `make bench-compare`")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m profiler.bench.storage",
                                     description="Print the benchmark folder of the GPU this machine has.")
    parser.add_argument("--baseline", action="store_true",
                        help="fail unless the folder holds saved times and a memory baseline to compare with")
    parser.add_argument("--root", type=Path, default=BENCHMARKS_DIR, help=f"the benchmarks' folder ({BENCHMARKS_DIR})")
    args = parser.parse_args(argv)
    try:
        print(folder_for(visible_gpu(), args.root, args.baseline))
    except NoBaseline as exc:
        print(f"seqprof bench: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
