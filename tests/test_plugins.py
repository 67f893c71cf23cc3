"""Plug-in models: the README's example in a real spawned worker, references from the command line
mixed with registry names, the contract's options, and every bad input as one line with exit 2."""
import os
import re
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import FAST_FLAGS, TINY_BUDGET
from typer.testing import CliRunner

from profiler.analysis.fit import growth_verdict
from profiler.cli import app, main
from profiler.results.store import ResultsStore, read_results
from profiler.run.plan import plan_points
from profiler.run.plugins import file_sha256
from profiler.run.runner import RunnerOptions, SweepRunner
from profiler.run.workload import build_workload

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "tests" / "plugins" / "my_gru.py"
runner = CliRunner()


def run_points(tmp_path, points):
    store = ResultsStore.create(tmp_path / "r.csv")
    with store:
        rows = SweepRunner(store, RunnerOptions(budget=TINY_BUDGET)).run(points)
    return rows, read_results(tmp_path / "r.csv")


def write_plugin(tmp_path, body: str, name: str = "model.py") -> Path:
    path = tmp_path / name
    path.write_text("import torch\nfrom torch import nn\n\n" + textwrap.dedent(body))
    return path


# A plug-in that follows the contract, for tests that change one thing about it.
GOOD = """
class Tiny(nn.Module):
    def __init__(self, seq_len, num_items):
        super().__init__()
        self.items = nn.Embedding(num_items + 1, 8)

    def forward(self, seq):
        return self.items(seq).pow(2).mean()


def make_batch(batch_size, seq_len, device, generator):
    return {"seq": torch.randint(1, 10, (batch_size, seq_len), device=device, generator=generator)}
"""


def test_the_readme_example_is_the_file_the_tests_run():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(# my_gru\.py.*?)```", readme, flags=re.S)
    assert blocks, "README has no '# my_gru.py' example"
    assert blocks[0] == EXAMPLE.read_text()


def test_the_example_runs_in_a_spawned_worker_and_scales_linearly(tmp_path):
    reference = f"{EXAMPLE}:GRURec"
    lengths = [16, 32, 64, 128]
    rows, frame = run_points(tmp_path, plan_points([reference], lengths, ["train", "infer"], ["naive"], 4, "tiny", "cpu"))
    assert [r["status"] for r in rows] == ["ok"] * 8
    assert {r["worker_pid"] for r in rows} != {os.getpid()}  # measured in another process
    assert set(frame["model"]) == set(frame["plugin_ref"]) == {reference}
    assert set(frame["plugin_sha256"]) == {file_sha256(EXAMPLE)}
    assert set(frame["family"]) == {"recurrent"} and set(frame["attention"]) == {"none"}
    for mode, series in frame.groupby("mode"):
        series = series.sort_values("seq_len")
        assert growth_verdict(series["seq_len"], series["tensor_footprint_mib"]) == "linear", mode
        assert growth_verdict(series["seq_len"], series["flops_per_step"]) == "linear", mode


def test_plugins_mix_with_registry_names_and_resume_finds_them_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(EXAMPLE.parent)
    out = tmp_path / "r.csv"
    result = runner.invoke(app, ["sweep", "--models", "convrec-light,./my_gru.py:GRURec", "--lengths", "8,16",
                                 "--out", str(out), *FAST_FLAGS])
    assert result.exit_code == 0, result.output
    frame = read_results(out)
    assert set(frame["model"]) == {"convrec-light", f"{EXAMPLE}:GRURec"}
    assert set(frame["status"]) == {"ok"}
    assert frame.loc[frame["model"] == "convrec-light", "plugin_ref"].isna().all()
    assert "my_gru.py:GRURec" in result.output and str(EXAMPLE.parent) not in result.output  # labelled by file name
    monkeypatch.chdir(tmp_path)
    again = runner.invoke(app, ["sweep", "--out", str(out), "--resume", *FAST_FLAGS])
    assert again.exit_code == 0, again.output
    assert "0 points measured" in again.output
    assert len(read_results(out)) == 4


def test_a_module_reference_is_imported_by_the_worker(tmp_path, monkeypatch):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    write_plugin(package, GOOD, "models.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    rows, frame = run_points(tmp_path, plan_points(["mypkg.models:Tiny"], [8], ["train"], ["naive"], 2, "tiny", "cpu"))
    assert rows[0]["status"] == "ok", rows[0].get("error")
    assert frame["plugin_sha256"].iloc[0] == file_sha256(package / "models.py")
    assert frame["family"].iloc[0] == "plug-in"


def test_a_failing_forward_is_an_error_point_and_infer_without_predict_is_skipped(tmp_path):
    path = write_plugin(tmp_path, GOOD + """
class Raises(Tiny):
    def forward(self, seq):
        raise ValueError("shapes do not line up")


class PerPosition(Tiny):
    def forward(self, seq):
        return self.items(seq).pow(2).mean(-1)  # (B, L): not reduced

    def predict(self, seq):
        return self.items(seq)[:, -1]
""")
    points = plan_points([f"{path}:Raises", f"{path}:PerPosition"], [8], ["train", "infer"], ["naive"], 4, "tiny", "cpu")
    rows, _ = run_points(tmp_path, points)
    outcome = {(Path(r["model"]).name, r["mode"]): (r["status"], r.get("error")) for r in rows}
    assert outcome[("model.py:Raises", "train")] == ("error", "ValueError: shapes do not line up")
    assert outcome[("model.py:Raises", "infer")] == ("skipped", "no predict method: model.py:Raises cannot run infer mode")
    assert outcome[("model.py:PerPosition", "train")] == (
        "error", "ValueError: PerPosition.forward returned a tensor of shape (4, 8), not the scalar loss")
    assert outcome[("model.py:PerPosition", "infer")][0] == "ok"


def test_sizes_reach_the_signatures_that_name_them_and_the_optimizer_is_adam_unless_named(tmp_path):
    path = write_plugin(tmp_path, GOOD + """
class Sized(Tiny):
    def __init__(self, seq_len, num_items, num_users=-1, **rest):
        super().__init__(seq_len, num_items)
        self.sizes = dict(seq_len=seq_len, num_items=num_items, num_users=num_users, **rest)


class OnlyLength(Tiny):
    def __init__(self, seq_len):
        super().__init__(seq_len, 300)
        self.seq_len = seq_len


class WithSGD(Tiny):
    optimizer = torch.optim.SGD


class WithMethod(Tiny):
    def optimizer(self):
        return torch.optim.RMSprop(self.parameters(), lr=0.1)
""")
    workload = build_workload(f"{path}:Sized", "none", "train", 8, 4, "tiny", "cpu")
    # **rest takes every size; the tiny profile's
    assert workload.model.module.sizes == {"seq_len": 8, "num_items": 300, "num_users": 100, "item_feature_dim": 16}
    assert build_workload(f"{path}:OnlyLength", "none", "train", 12, 4, "tiny", "cpu").model.module.seq_len == 12
    assert type(workload.optimizer) is torch.optim.Adam
    assert type(build_workload(f"{path}:WithSGD", "none", "train", 8, 4, "tiny", "cpu").optimizer) is torch.optim.SGD
    assert type(build_workload(f"{path}:WithMethod", "none", "train", 8, 4, "tiny", "cpu").optimizer) is torch.optim.RMSprop
    before = [p.detach().clone() for p in workload.model.parameters()]
    workload.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, workload.model.parameters()))  # the step trains it


BAD_PLUGINS = {
    "missing file": (None, "Tiny", "no such file"),
    "import fails": ("raise RuntimeError('needs the lab cluster')\n" + GOOD, "Tiny",
                     "cannot import plug-in ./model.py:Tiny: RuntimeError: needs the lab cluster"),
    "syntax error": ("def broken(:\n", "Tiny", "cannot import plug-in ./model.py:Tiny: SyntaxError"),
    "missing attribute": (GOOD, "Tin", "no attribute 'Tin' in ./model.py; its nn.Module classes: Tiny"),
    "a function": (GOOD, "make_batch", "is the function make_batch, not an nn.Module subclass"),
    "a plain class": (GOOD + "class Plain:\n    pass\n", "Plain", "is the class Plain, not an nn.Module subclass"),
    "no make_batch": (GOOD.replace("def make_batch", "def other_batch"), "Tiny", "no make_batch(batch_size, seq_len"),
    "make_batch returns a list": (GOOD.replace('return {"seq": ', "return [").replace("generator)}", "generator)]"),
                                  "Tiny", "make_batch returned a value of type list, not a dict of tensors"),
    "make_batch returns numbers": (GOOD.replace('return {"seq": ', 'return {"seq": 3, "x": '), "Tiny",
                                   "make_batch returned 'seq': a value of type int; every entry must be a tensor"),
    "make_batch raises": (GOOD.replace("return {", "raise KeyError('vocab')\n    return {"), "Tiny",
                          "make_batch failed: KeyError: 'vocab'"),
    "no seq_len": (GOOD.replace("def __init__(self, seq_len, num_items)", "def __init__(self, num_items)"), "Tiny",
                   "Tiny.__init__ does not accept seq_len"),
    "forward needs an input make_batch lacks": (GOOD.replace("def forward(self, seq)", "def forward(self, seq, target)"),
                                                "Tiny", "Tiny.forward needs target, which make_batch does not give"),
}


def one_line_error(capsys, *args) -> str:
    """The command's only output line, which must be an error with exit code 2."""
    assert main(list(args)) == 2
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seqprof: error: "), lines
    return lines[0]


@pytest.mark.parametrize("case", BAD_PLUGINS)
def test_bad_plugins_are_one_line_errors_and_nothing_is_measured(tmp_path, monkeypatch, capsys, case):
    body, attribute, message = BAD_PLUGINS[case]
    if body is not None:
        write_plugin(tmp_path, body)
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, "sweep", "--models", f"sasrec,./model.py:{attribute}", "--lengths", "8",
                          "--out", str(tmp_path / "r.csv"), *FAST_FLAGS)
    assert message in line
    assert not (tmp_path / "r.csv").exists()


def test_an_unimportable_module_says_why(capsys):
    line = one_line_error(capsys, "sweep", "--models", "no_such_package.models:GRURec", "--lengths", "8", *FAST_FLAGS)
    assert line.endswith("cannot import plug-in no_such_package.models:GRURec: ModuleNotFoundError: "
                         "No module named 'no_such_package'")


def test_a_name_that_is_neither_lists_the_models_and_the_plugin_forms(capsys):
    line = one_line_error(capsys, "sweep", "--models", "gru4rec", *FAST_FLAGS)
    assert "unknown model 'gru4rec'; choose from sasrec, " in line
    assert line.endswith("or give a plug-in as path/to/file.py:Class or package.module:Class")


def test_resume_refuses_a_plugin_that_changed_and_keeps_the_file(tmp_path, capsys):
    path = write_plugin(tmp_path, GOOD)
    out = tmp_path / "r.csv"
    first = runner.invoke(app, ["sweep", "--models", f"{path}:Tiny", "--lengths", "8", "--out", str(out), *FAST_FLAGS])
    assert first.exit_code == 0, first.output
    kept, kept_meta = out.read_text(), (tmp_path / "r.csv.meta.json").read_text()
    path.write_text(path.read_text() + "\n# a change\n")
    line = one_line_error(capsys, "sweep", "--out", str(out), "--resume", "--lengths", "8,16", *FAST_FLAGS)
    assert "plug-in model.py:Tiny changed since its rows were measured" in line
    assert out.read_text() == kept and (tmp_path / "r.csv.meta.json").read_text() == kept_meta
    assert pd.read_csv(out)["plugin_sha256"].iloc[0] != file_sha256(path)
