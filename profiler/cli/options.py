"""Parsing and validation of the CLI's option values; each failure is one clear line.

These are typer callbacks: they receive the raw string and return the parsed value, raising
``typer.BadParameter`` (exit code 2) with a message that says what is wrong and what is valid.
"""
import typer

from models.base import ATTENTION_BACKENDS
from models.profiles import PROFILES
from models.registry import REGISTRY
from profiler.results.schema import MODES
from profiler.run.precision import DTYPES
from profiler.run.sweep import CPU_DEFAULTS, GPU_DEFAULTS

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


def parse_lengths(value: str | None) -> list[int] | None:
    """'50,200,500' -> [50, 200, 500]: positive integers, no repeats."""
    if value is None:
        return None
    lengths = []
    for item in _items(value, "lengths (e.g. 50,200,500)"):
        try:
            length = int(item)
        except ValueError:
            raise typer.BadParameter(f"{item!r} in {value!r} is not an integer length") from None
        if length <= 0:
            raise typer.BadParameter(f"lengths must be positive; got {length}")
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
    return _choice_list(value, list(REGISTRY), "model")


def parse_attention(value: str | None) -> list[str] | None:
    return _choice_list(value, ATTENTION_BACKENDS, "attention backend")


def parse_dtypes(value: str | None) -> list[str] | None:
    return _choice_list(value, DTYPES, "dtype")


def parse_profile(value: str | None) -> str | None:
    return _choice(value, sorted(PROFILES), "profile")


def parse_device(value: str | None) -> str | None:
    return _choice(value, DEVICES, "device")


def parse_mode(value: str | None) -> str | None:
    return _choice(value, MODE_CHOICES, "mode")


def modes_for(mode: str) -> list[str]:
    return list(MODES) if mode == "both" else [mode]
