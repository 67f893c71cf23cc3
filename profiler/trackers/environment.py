"""The environment a run measured on: hardware, driver and library versions, code version."""
import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def seqprof_version() -> str:
    try:
        return metadata.version("seqprof")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def git_commit() -> str:
    """The checkout's commit (with -dirty for uncommitted changes); copies of the tree without git
    history say which commit they are through SEQPROF_GIT_COMMIT."""
    if os.environ.get("SEQPROF_GIT_COMMIT"):
        return os.environ["SEQPROF_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _gpu_facts() -> dict:
    """GPU facts read through NVML, so this process creates no CUDA context of its own (the
    workers hold the only contexts, and their memory is what gets measured)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            name = pynvml.nvmlDeviceGetName(handle)
            return {
                "device_name": name.decode() if isinstance(name, bytes) else name,
                "driver": pynvml.nvmlSystemGetDriverVersion(),
                "gpu_memory_mib": pynvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20,
                "gpu_count": pynvml.nvmlDeviceGetCount(),
            }
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # noqa: BLE001 - no NVML: say so rather than guess
        return {"device_name": "CUDA GPU (NVML unavailable)", "driver": f"unavailable ({type(exc).__name__})"}


def gpu_memory_mib() -> int | None:
    """The first GPU's memory, read through NVML (no CUDA context here); None where NVML cannot tell."""
    return _gpu_facts().get("gpu_memory_mib")


def resolve_device(requested: str) -> str:
    """'auto' -> 'cuda' when a GPU is usable, else 'cpu'; 'cuda' without a GPU is an error."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA GPU is available (torch.cuda.is_available() is False)")
    if requested not in ("cuda", "cpu"):
        raise ValueError(f"Unknown device {requested!r}; choose from ['auto', 'cuda', 'cpu']")
    return requested


def visible_gpu_count() -> int:
    """The CUDA GPUs this process may use (after CUDA_VISIBLE_DEVICES), without a CUDA context."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cpu_name() -> str:
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def device_name(device: str) -> str:
    """What measures: the GPU's name as NVML gives it on CUDA, the processor on the CPU."""
    return _gpu_facts()["device_name"] if device == "cuda" else cpu_name()


def collect_environment(device: str) -> dict:
    env = {
        "device": device,
        "device_name": cpu_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "seqprof": seqprof_version(),
        "git_commit": git_commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if device == "cuda":
        env.update(_gpu_facts())
    return env
