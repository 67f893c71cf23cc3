"""The seqprof command line: a thin typed layer over the pipeline below it.

common (the app, errors) <- sweep, analyse, reproduce, limits, info (the commands, registered here);
``main`` is the console entry point.
"""
import os
import signal
import sys
import threading


def _interrupted_while_loading(signum, frame) -> None:
    """Ctrl-C while torch and pandas load (seconds on a busy machine) is one line, as it is later.
    It ends the process at once: a KeyboardInterrupt raised inside those imports can land in a
    library's bare ``except`` and be swallowed, and the command would run on. Nothing is open yet."""
    sys.stderr.write("seqprof: interrupted\n")
    sys.stderr.flush()
    os._exit(130)


# Only where Ctrl-C would raise KeyboardInterrupt: not where it is ignored (a background job), nor
# off the main thread, where no handler can be set.
_LOADING = threading.current_thread() is threading.main_thread() \
    and signal.getsignal(signal.SIGINT) is signal.default_int_handler
if _LOADING:
    signal.signal(signal.SIGINT, _interrupted_while_loading)
try:
    import typer

    from profiler.cli import analyse, info, limits, reproduce, sweep
    from profiler.cli.common import app
finally:
    if _LOADING:
        signal.signal(signal.SIGINT, signal.default_int_handler)

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
