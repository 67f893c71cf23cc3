"""Parsing and validation of the CLI's option values; each failure is one clear line.

These are typer callbacks: they receive the raw string and return the parsed value, raising
``typer.BadParameter`` (exit code 2) with a message that says what is wrong and what is valid.
"""
import math
import re

import typer

from models.base import ATTENTION_BACKENDS
from models.profiles import PROFILES
from models.registry import REGISTRY
from profiler.results.schema import MODES
from profiler.run.plugins import model_name
from profiler.run.precision import DTYPES
from profiler.run.sweep import BACKENDS, CPU_DEFAULTS, GPU_DEFAULTS
from profiler.run.workload import EXECUTIONS
from profiler.trackers.environment import visible_gpu_count

DEVICES = ("auto", "cuda", "cpu")
MODE_CHOICES = ("train", "infer", "both")

# What --help lists, from the registries themselves.
MODEL_NAMES = ", ".join(REGISTRY)
PROFILE_NAMES = ", ".join(PROFILES)


def length_list(lengths) -> str:
    """50,100,...,900 as '50..900 step 100'; other lists as they are."""
    steps = {b - a for a, b in zip(lengths, lengths[1:])}
    if len(lengths) > 3 and len(steps) == 1:
        return f"{lengths[0]}..{lengths[-1]} step {steps.pop()}"
    return ",".join(map(str, lengths))


def per_device(field: str, show=str) -> str:
    """A default that depends on the device, as --help shows it: 'GPU 128; CPU 4'."""
    return f"GPU {show(getattr(GPU_DEFAULTS, field))}; CPU {show(getattr(CPU_DEFAULTS, field))}"


def per_device_budget(field: str) -> str:
    return f"GPU {getattr(GPU_DEFAULTS.budget, field):g}; CPU {getattr(CPU_DEFAULTS.budget, field):g}"


def modes_text(modes) -> str:
    return "both" if set(modes) == set(MODES) else ",".join(modes)


def profile_text(profile) -> str:
    return profile or "each model's own"


def _items(value: str, what: str) -> list[str]:
    items = [item.strip() for item in value.split(",")]
    if not value.strip() or any(not item for item in items):
        raise typer.BadParameter(f"{value!r} is not a comma-separated list of {what}")
    duplicates = sorted({item for item in items if items.count(item) > 1})
    if duplicates:
        raise typer.BadParameter(f"{value!r} repeats {', '.join(duplicates)}")
    return items


# Python's int() and float() also read '1_000', '٥٠' and 'inf'; an option value is plain ASCII.
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")

# Bounds past which a value is a typo, not a setting: no device holds a batch of a million
# histories, and seeds are 32-bit as numpy's and most tools' are.
MAX_LENGTH = 2**20
MAX_BATCH_SIZE = 2**20
MAX_SEED = 2**32 - 1
MAX_REPS = 10**6
MAX_WARMUP_STEPS = 10**4
MAX_SPARE_WORKERS = 8  # each holds a CUDA context (about 0.8 GiB) while it waits
MAX_LANES_PER_GPU = 8  # each lane holds a worker and its spares
MAX_THREADS = 1024


def integer(low: int, high: int):
    """A parser of a decimal integer within [low, high], for ``typer.Option(parser=...)``."""

    def parse(value) -> int:
        if isinstance(value, str):
            if not _INTEGER.fullmatch(value.strip()):
                raise typer.BadParameter(f"{value!r} is not a decimal integer")
            value = int(value)
        if not low <= value <= high:
            raise typer.BadParameter(f"{value} is not in the range {low}..{high}")
        return value

    return parse


def number(low: float, high: float | None = None):
    """A parser of a finite decimal number within [low, high], for ``typer.Option(parser=...)``."""

    def parse(value) -> float:
        if isinstance(value, str):
            if not _NUMBER.fullmatch(value.strip()):
                raise typer.BadParameter(f"{value!r} is not a finite decimal number")
            value = float(value)
        if not math.isfinite(value):
            raise typer.BadParameter(f"{value} is not a finite number")
        if value < low:
            raise typer.BadParameter(f"{value:g} is below {low:g}")
        if high is not None and value > high:
            raise typer.BadParameter(f"{value:g} is above {high:g}")
        return value

    return parse


def parse_lengths(value: str | None) -> list[int] | None:
    """'50,200,500' -> [50, 200, 500]: positive decimal integers, no repeats."""
    if value is None:
        return None
    lengths = []
    for item in _items(value, "lengths (e.g. 50,200,500)"):
        if not _INTEGER.fullmatch(item):
            raise typer.BadParameter(f"{item!r} in {value!r} is not an integer length")
        length = int(item)
        if length <= 0:
            raise typer.BadParameter(f"lengths must be positive; got {length}")
        if length > MAX_LENGTH:
            raise typer.BadParameter(f"lengths must be at most {MAX_LENGTH}; got {length}")
        if length in lengths:
            raise typer.BadParameter(f"{value!r} repeats {length}")
        lengths.append(length)
    return lengths


def _choice_list(value: str | None, choices, what: str) -> list[str] | None:
    if value is None:
        return None
    items = _items(value, f"{what}s")
    for item in items:
        if item not in choices:
            raise typer.BadParameter(f"unknown {what} {item!r}; choose from {', '.join(choices)}")
    return items


def _choice(value: str | None, choices, what: str) -> str | None:
    if value is not None and value not in choices:
        raise typer.BadParameter(f"unknown {what} {value!r}; choose from {', '.join(choices)}")
    return value


def parse_models(value: str | None) -> list[str] | None:
    """Registry names and plug-in references ('./my_gru.py:GRURec', 'mypkg.models:GRURec'), each
    plug-in imported and checked here; a file's reference becomes its absolute path."""
    if value is None:
        return None
    names = []
    for item in _items(value, "models"):
        try:
            name = model_name(item)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        if name in names:
            raise typer.BadParameter(f"{value!r} names {item} twice")
        names.append(name)
    return names


def parse_brackets(value: str | None) -> dict[str, tuple[int, int]] | None:
    """'sasrec=32256:32512,caser=1280:1536' -> {model: (low, high)}: for each model named, a value
    believed to fit and a larger one believed not to (registry names or plug-in references)."""
    if value is None:
        return None
    brackets: dict[str, tuple[int, int]] = {}
    for item in _items(value, "MODEL=LOW:HIGH brackets (e.g. sasrec=32256:32512)"):
        model, _, bounds = item.partition("=")
        low, _, high = bounds.partition(":")
        if not (model and _INTEGER.fullmatch(low.strip()) and _INTEGER.fullmatch(high.strip())):
            raise typer.BadParameter(f"{item!r} is not MODEL=LOW:HIGH (e.g. sasrec=32256:32512)")
        low_value, high_value = int(low), int(high)
        if not 0 < low_value < high_value:
            raise typer.BadParameter(f"{item!r}: LOW must be positive and below HIGH")
        try:
            name = model_name(model.strip())
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        if name in brackets:
            raise typer.BadParameter(f"{value!r} names {model.strip()} twice")
        brackets[name] = (low_value, high_value)
    return brackets


def parse_attention(value: str | None) -> list[str] | None:
    return _choice_list(value, ATTENTION_BACKENDS, "attention backend")


def parse_dtypes(value: str | None) -> list[str] | None:
    return _choice_list(value, DTYPES, "dtype")


def parse_executions(value: str | None) -> list[str] | None:
    return _choice_list(value, EXECUTIONS, "execution")


def parse_gpus(value: str | None) -> list[int] | None:
    """'0,1' -> [0, 1]: indices of GPUs this process sees, no repeats."""
    if value is None:
        return None
    visible = visible_gpu_count()
    gpus = []
    for item in _items(value, "GPU indices (e.g. 0,1)"):
        try:
            index = int(item)
        except ValueError:
            raise typer.BadParameter(f"{item!r} in {value!r} is not an integer GPU index") from None
        if index < 0:
            raise typer.BadParameter(f"GPU indices start at 0; got {index}")
        if index >= visible:
            seen = f"GPUs 0..{visible - 1}" if visible else "no CUDA GPU"
            raise typer.BadParameter(f"GPU {index} is not visible: this machine shows {seen}")
        gpus.append(index)
    return gpus


def parse_backend(value: str | None) -> str | None:
    return _choice(value, BACKENDS, "backend")


def parse_profile(value: str | None) -> str | None:
    return _choice(value, sorted(PROFILES), "profile")


def parse_device(value: str | None) -> str | None:
    return _choice(value, DEVICES, "device")


def parse_mode(value: str | None) -> str | None:
    return _choice(value, MODE_CHOICES, "mode")


def modes_for(mode: str) -> list[str]:
    return list(MODES) if mode == "both" else [mode]
