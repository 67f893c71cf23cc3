"""Parsing and validation of the CLI's option values; each failure is one clear line.

These are typer callbacks: they receive the raw string and return the parsed value, raising
``typer.BadParameter`` (exit code 2) with a message that says what is wrong and what is valid.
"""
import typer

from models.base import ATTENTION_BACKENDS
from models.profiles import PROFILES
from profiler.results.schema import MODES
from profiler.run.plugins import model_name
from profiler.run.precision import DTYPES

DEVICES = ("auto", "cuda", "cpu")
MODE_CHOICES = ("train", "infer", "both")


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
