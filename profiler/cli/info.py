"""seqprof models and seqprof env: what can be measured, and on what."""
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from profiler.cli import options
from profiler.cli.common import fail, out
from profiler.trackers.environment import collect_environment, resolve_device


def list_models() -> None:
    """List the registered models: family, default profile, parameters, paper and authors' code."""
    from rich import box

    from profiler.present.catalog import registry_rows

    rows = registry_rows()
    sizes = Table(title="seqprof models: parameters at each model's default profile and paper length L",
                  box=box.SIMPLE_HEAD, title_justify="left")
    for column in ("name", "family", "profile", "L", "parameters", "trainable"):
        sizes.add_column(column, justify="right" if column in ("L", "parameters", "trainable") else "left", no_wrap=True)
    for row in rows:
        sizes.add_row(row["name"], row["family"], row["profile"], str(row["seq_len"]), f"{row['param_count']:,}",
                      f"{row['trainable_param_count']:,}")
    out.print(sizes)
    # Titles and repositories are long: a second table, where they wrap in a column of their own.
    sources = Table(title="sources (defaults and scaling of each model: models/README.md)", box=box.SIMPLE_HEAD,
                    title_justify="left")
    sources.add_column("name", no_wrap=True)
    sources.add_column("paper; authors' code", ratio=1)
    for row in rows:
        sources.add_row(row["name"], f"{row['paper']}\n[dim]code:[/] {escape(row['code'])}")
    out.print(sources)


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
