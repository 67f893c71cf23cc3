"""The Python API: a plug-in class swept into a DataFrame by real workers, the CSV when asked, and
the report, figures and comparison as functions."""
import subprocess
import sys
import types
from pathlib import Path

import pytest
from helpers import synthetic_results
from plugins.my_gru import GRURec
from torch import nn

from profiler import api
from profiler.results.store import read_results

FAST = dict(device="cpu", profile="tiny", batch_size=4, warmup=1, max_warmup=1, time_budget_s=0.01, min_reps=2,
            max_reps=3, progress=False)


def test_sweep_takes_classes_and_names_and_returns_the_rows(tmp_path):
    out = tmp_path / "mine.csv"
    frame = api.sweep([GRURec, "convrec-light"], [8, 16], mode="both", out=out, **FAST)
    assert len(frame) == 8 and set(frame["status"]) == {"ok"}
    assert set(frame["model"]) == {"plugins.my_gru:GRURec", "convrec-light"}  # the class by its module
    assert set(frame.loc[frame["model"] == "plugins.my_gru:GRURec", "family"]) == {"recurrent"}
    assert read_results(out)[["model", "mode", "seq_len"]].equals(frame[["model", "mode", "seq_len"]])
    assert (tmp_path / "mine.csv.meta.json").exists()
    again = api.sweep([GRURec, "convrec-light"], [8, 16, 24], mode="both", out=out, resume=True, **FAST)
    assert len(again) == 12 and sorted(set(again["seq_len"])) == [8, 16, 24]


def test_report_plot_and_compare_take_frames_and_files(tmp_path):
    frame = synthetic_results()
    path = tmp_path / "synthetic.csv"
    frame.to_csv(path, index=False)
    text = api.report(path, mode="train", markdown=tmp_path / "report.md")
    assert text.startswith("# seqprof scaling report") and "| cosrec | convolution | train |" in text
    assert (tmp_path / "report.md").read_text() == text
    figures = api.plot(frame, out_dir=tmp_path / "plots", baseline="convrec-light", stem="s")
    assert "s-train-ratio-convrec-light" in figures and (tmp_path / "plots" / "s-train-time_median_ms.svg").exists()
    slower = frame.copy()
    slower.loc[slower["model"] == "caser", "peak_allocated_mib"] *= 2
    changes = api.compare(path, slower)
    assert set(changes.loc[changes["memory_change"] != "", "model"]) == {"caser"}


def test_a_class_workers_cannot_import_is_refused(monkeypatch):
    notebook = types.ModuleType("__main__")  # an interactive session: no file behind it
    monkeypatch.setitem(sys.modules, "__main__", notebook)
    cell = type("CellModel", (nn.Module,), {"__module__": "__main__"})
    with pytest.raises(ValueError, match="CellModel is defined interactively; worker processes cannot import it"):
        api.sweep(cell, [8], **FAST)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(lengths=[8, 8]), "lengths must be distinct positive integers"),
        (dict(lengths=[0]), "lengths must be distinct positive integers"),
        (dict(mode="fly"), "unknown mode 'fly'"),
        (dict(models="gru4rec"), "unknown model 'gru4rec'"),
        (dict(resume=True), "resume needs out"),
        (dict(min_reps=9, max_reps=3), "min_reps 9 is larger than max_reps 3"),
        (dict(spare_workers=-1), "spare_workers must be 0 or more"),
    ],
)
def test_bad_options_raise_the_command_lines_message(options, message):
    arguments = {"models": "convrec-light", "lengths": [8], **FAST, **options}
    with pytest.raises(ValueError, match=message):
        api.sweep(**arguments)


def test_a_script_that_sweeps_unguarded_is_refused_in_the_workers(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from profiler import api\n"
        f"rows = api.sweep(['sasrec'], [8], mode='infer', attention='naive', device='cpu', profile='tiny',\n"
        f"                 batch_size=2, min_reps=1, max_reps=1, warmup=1, max_warmup=1, progress=False,\n"
        f"                 out={str(tmp_path / 'r.csv')!r})\n"
        "print('statuses', sorted(set(rows['status'])))\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parent.parent)
    assert "put the call under `if __name__ == \"__main__\":`" in done.stderr
    assert "statuses ['error']" in done.stdout  # the worker could not serve; nothing else was written
