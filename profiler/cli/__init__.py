"""The seqprof command line: a thin typed layer over the pipeline below it.

common (the app, errors) <- sweep, analyse, reproduce, limits, info (the commands, registered here);
``main`` is the console entry point.
"""
import sys

try:
    import typer

    from profiler.cli import analyse, info, limits, reproduce, sweep
    from profiler.cli.common import app
except KeyboardInterrupt:
    # Ctrl-C while torch and pandas load (seconds on a busy machine) is one line, as it is later.
    print("seqprof: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

__all__ = ["app", "main"]

# Registered here, in the order ``seqprof --help`` lists them: the main job first.
app.command("sweep")(sweep.sweep)
app.command("report")(analyse.report)
app.command("plot")(analyse.plot_command)
app.command("compare")(analyse.compare)
app.command("reproduce")(reproduce.reproduce_command)
app.command("max-length")(limits.max_length)
app.command("models")(info.list_models)
app.command("env")(info.show_environment)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors print as one line (`seqprof: error: ...`), exit code 2."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="seqprof", standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        print("seqprof: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # typer's usage errors (its own click, or the click it wraps) carry these two attributes.
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            print(f"seqprof: error: {exc.format_message()}", file=sys.stderr)
            return exc.exit_code
        raise
    # An Exit raised inside a command comes back as its exit code in non-standalone mode.
    return result if isinstance(result, int) else 0
