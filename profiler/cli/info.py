"""seqprof models and seqprof env: what can be measured, and on what."""
from typing import Annotated

import typer
from rich.table import Table

from profiler.cli import options
from profiler.cli.common import fail, out
from profiler.trackers.environment import collect_environment, resolve_device


def list_models() -> None:
    """List the registered models: family, source, parameters at the default profile."""
    from profiler.present.catalog import registry_rows

    table = Table(title="seqprof models (parameters at each model's default profile and paper length)")
    for column in ("name", "family", "profile", "L", "parameters", "trainable", "paper", "authors' code"):
        table.add_column(column, justify="right" if column in ("L", "parameters", "trainable") else "left")
    for row in registry_rows():
        table.add_row(
            row["name"], row["family"], row["profile"], str(row["seq_len"]),
            f"{row['param_count']:,}", f"{row['trainable_param_count']:,}", row["paper"], row["code"],
        )
    out.print(table)


def show_environment(
    device: Annotated[str, typer.Option(callback=options.parse_device, help="auto, cuda or cpu.")] = "auto",
) -> None:
    """Show the GPU, driver, CUDA, torch, python, seqprof version and git commit."""
    try:
        resolved = resolve_device(device)
    except ValueError as exc:
        fail(str(exc))
    for key, value in collect_environment(resolved).items():
        out.print(f"{key:>16}: {value}")
