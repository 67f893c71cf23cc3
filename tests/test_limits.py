"""The memory search: doubling then bisection against a boundary, the CPU prediction, its errors."""
import pytest
from typer.testing import CliRunner

from profiler.analysis.limits import (
    PREDICTION_BATCH,
    LimitError,
    Probe,
    ProbeWorkers,
    check_limit,
    footprint_at,
    measured_limit,
    model_query,
    predicted_limit,
    search_largest,
)
from profiler.cli import app
from profiler.run.runner import HELD_AFTER_LIMIT_MIB
from profiler.run.workload import build_workload, step_costs


@pytest.mark.parametrize("boundary", [16, 17, 100, 777, 1024, 8191])
def test_the_search_finds_the_boundary_exactly_in_few_probes(boundary):
    probed = []

    def fits(value: int) -> bool:
        probed.append(value)
        return value <= boundary

    assert search_largest(fits, 16, 8192) == (boundary, boundary + 1)
    assert len(probed) <= 2 * 9 + 4  # 9 = log2(8192 / 16) doublings, then a bisection of at most 12 steps
    assert len(set(probed)) == len(probed)  # no length probed twice


def test_the_search_reports_nothing_fits_and_stops_at_its_limit():
    assert search_largest(lambda v: False, 16, 4096) == (None, 16)
    assert search_largest(lambda v: True, 16, 5000) == (5000, None)


def test_a_prediction_grows_with_the_budget_and_is_quadratic_for_materialised_attention():
    small = predicted_limit(model_query("sasrec", "naive", "train", "tiny", "seq_len", 8, 1.5, "float32"), 65536)[0]
    large = predicted_limit(model_query("sasrec", "naive", "train", "tiny", "seq_len", 8, 6.0, "float32"), 65536)[0]
    linear = predicted_limit(model_query("convrec-light", None, "train", "tiny", "seq_len", 8, 1.5, "float32"), 65536)[0]
    assert small < large < 3 * small  # four times the memory, about twice the length: quadratic
    assert linear > 5 * small  # the linear model goes much further in the same budget


def test_a_budget_below_the_context_is_refused():
    with pytest.raises(LimitError, match="below the CUDA context"):
        predicted_limit(model_query("sasrec", None, "train", "tiny", "seq_len", 8, 0.25, "float32"), 1024)


@pytest.mark.parametrize("args, message", [
    (["--memory-gib", "0.25", "--models", "sasrec", "--profile", "tiny"], "below the CUDA context"),
    (["--memory-gib", "4", "--dtype", "fp8"], "unknown dtype 'fp8'"),
    (["--memory-gib", "4", "--vary", "width"], "unknown --vary 'width'"),
    (["--memory-gib", "4", "--mode", "both"], "train or infer"),
    (["--memory-gib", "4", "--models", "sasrec", "--check"], "a prediction has nothing to check"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = CliRunner().invoke(app, ["max-length", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_the_table_and_csv_name_the_largest_length_and_what_fills_memory(tmp_path):
    out = tmp_path / "limits.csv"
    result = CliRunner().invoke(app, ["max-length", "--memory-gib", "2", "--models", "sasrec,caser", "--profile", "tiny",
                                      "--batch-size", "8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Predicted" in result.output
    import pandas as pd
    table = pd.read_csv(out)
    assert list(table["model"]) == ["sasrec", "caser"]
    assert (table["largest"] > 16).all() and table["predicted"].all()
    assert set(table["dominant_part"]) <= {"params", "grads", "optimizer state", "inputs", "activations"}
    assert table["git_commit"].notna().all()
    assert table["device_name"].str.startswith("CPU (").all()  # a prediction is made on the CPU, and says so


def test_each_model_is_written_when_its_search_ends_so_a_later_failure_keeps_it(tmp_path, monkeypatch):
    from profiler.cli import limits as limits_cli

    real = limits_cli.predicted_limit

    def failing_for_caser(query, top):
        if query.model == "caser":
            raise LimitError("caser at seq_len 64: worker died")
        return real(query, top)

    monkeypatch.setattr(limits_cli, "predicted_limit", failing_for_caser)
    out = tmp_path / "limits.csv"
    result = CliRunner().invoke(app, ["max-length", "--memory-gib", "2", "--models", "sasrec,caser", "--profile", "tiny",
                                      "--batch-size", "8", "--out", str(out)])
    assert result.exit_code == 2 and "caser at seq_len 64" in result.output
    import pandas as pd
    assert list(pd.read_csv(out)["model"]) == ["sasrec"]


def test_an_unwritable_table_is_refused_before_any_search(tmp_path):
    result = CliRunner().invoke(app, ["max-length", "--memory-gib", "2", "--models", "sasrec", "--profile", "tiny",
                                      "--out", str(tmp_path / "missing" / "limits.csv")])
    assert result.exit_code == 2 and "cannot write" in result.output and "no folder" in result.output
    assert "Predicted" not in result.output  # refused before the search began


@pytest.mark.parametrize("boundary, holds", [(1000, True), (1050, True), (1100, False)])
def test_a_check_runs_the_limit_and_ten_percent_above_it_alone(boundary, holds):
    query = model_query("sasrec", None, "train", "tiny", "seq_len", 8, 24.0, "float32")
    probed = []

    def probe(q, value):
        probed.append(value)
        return Probe(value, value <= boundary, {})

    checked = check_limit(query, 1000, probe)
    assert probed == [1000, 1100]
    assert checked.holds is holds and checked.above == 1100
    assert checked.summary.startswith("fits at 1,000, ")
    assert ("does not hold" in checked.summary) is not holds


def test_a_check_of_a_small_limit_probes_above_it():
    query = model_query("sasrec", None, "train", "tiny", "seq_len", 8, 24.0, "float32")
    assert check_limit(query, 3, lambda q, v: Probe(v, v <= 3, {})).above == 4


class FakeWorker:
    """Fits up to ``boundary``; an OOM that leaks (``held_after_mib`` above the limit) leaves it
    unusable, as a real one that kept the failed step's tensors."""

    started: list["FakeWorker"] = []

    def __init__(self, boundary: int, oom_held_mib: float):
        self.boundary, self.oom_held_mib = boundary, oom_held_mib
        self.values, self.closed, self.poisoned = [], False, False
        FakeWorker.started.append(self)

    def measure(self, point, budget, timeout_s, memory_limit_mib):
        assert not self.closed and not self.poisoned, "a retired worker was asked for a probe"
        self.values.append(point.seq_len)
        fits = point.seq_len <= self.boundary
        self.poisoned = not fits and self.oom_held_mib > HELD_AFTER_LIMIT_MIB
        return {"status": "ok" if fits else "oom", "held_after_mib": 0.0 if fits else self.oom_held_mib}

    def close(self):
        self.closed = True


def _search_with_fake_workers(oom_held_mib: float):
    FakeWorker.started = []
    query = model_query("sasrec", None, "train", "tiny", "seq_len", 8, 24.0, "float32")
    good, bad, probes = measured_limit(query, 16, 8192, lambda: ProbeWorkers(lambda: FakeWorker(777, oom_held_mib)))
    assert good <= 777 < bad and bad - good <= 0.01 * good  # lengths are searched to 1%
    assert all(w.closed for w in FakeWorker.started)
    return [w for w in FakeWorker.started if w.values], probes


def test_probes_share_a_worker_through_ooms_that_freed_everything():
    used, probes = _search_with_fake_workers(oom_held_mib=0.0)
    assert len(used) == 1 and used[0].values == [p.value for p in probes]  # every probe in one worker
    assert sum(not p.fits for p in probes) >= 2
    assert len(FakeWorker.started) == 2  # and one spare, started ahead and closed unused


def test_an_oom_that_left_memory_held_retires_its_worker():
    used, probes = _search_with_fake_workers(oom_held_mib=HELD_AFTER_LIMIT_MIB + 1)
    assert used[0].values == [16, 32, 64, 128, 256, 512, 1024]  # every fit up to the first OOM in one worker
    ooms = [p for p in probes if not p.fits]
    assert len(used) == len(ooms) + (0 if probes[-1].fits is False else 1)  # a new worker after each OOM only
    assert len(FakeWorker.started) == len(used) + 1  # and one spare, started ahead and closed unused


@pytest.mark.parametrize("model", ["sasrec", "cosrec", "carca", "hstu"])
def test_a_prediction_measures_a_small_batch_and_scales_what_grows_with_it(model):
    # A footprint measured at the batch asked for would have to fit in the host's memory.
    query = model_query(model, "naive", "train", "tiny", "seq_len", 8, 24.0, "float32")
    scaled = footprint_at(query, 32)
    point = query.point(32, "cpu")
    assert point.batch_size > PREDICTION_BATCH
    direct = step_costs(build_workload(model, point.attention, "train", 32, 8, "tiny", "cpu")).footprint
    assert sum(scaled.values()) == pytest.approx(direct.total_mib, rel=0.03)
    assert scaled["params_mib"] == pytest.approx(direct.params_mib)


@pytest.mark.parametrize("boundary", [3000, 20000, 40000])
def test_a_tolerance_stops_the_bisection_within_it_of_the_boundary_in_fewer_probes(boundary):
    exact, tolerant = [], []
    search_largest(lambda v: exact.append(v) or v <= boundary, 16, 65536)
    good, bad = search_largest(lambda v: tolerant.append(v) or v <= boundary, 16, 65536, tolerance=0.01)
    assert good <= boundary < bad  # the last fit and the first failure straddle the boundary
    assert bad - good <= 0.01 * good
    assert len(tolerant) <= len(exact) - 4  # the last halvings, from 1% to one, are left out


def _fake_gpu_searches(monkeypatch, boundaries: dict, gpu_mib: int = 143771, seconds: float = 0.3,
                       brackets: dict | None = None):
    """max-length as on a GPU, with searches that find ``boundaries`` (a model: its limit, or an
    error message) in ``seconds``; returns the most searches that ran at once. ``brackets`` hears
    each model's --between bracket as the search was given it."""
    brackets = {} if brackets is None else brackets
    import threading
    import time

    from profiler.cli import limits as limits_cli

    running, most, lock = [0], [0], threading.Lock()

    def measured(query, start, top, on_probe=None, between=None):
        brackets[query.model] = between
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(seconds)
            found = boundaries[query.model]
            if isinstance(found, str):
                raise LimitError(found)
            return found, found + 1, [Probe(found, True, {"nvml_peak_mib": 1000.0})]
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(limits_cli, "resolve_device", lambda requested: "cuda")
    monkeypatch.setattr(limits_cli, "gpu_memory_mib", lambda: gpu_mib)
    monkeypatch.setattr(limits_cli, "device_name", lambda device: "NVIDIA H200")
    monkeypatch.setattr(limits_cli, "measured_limit", measured)
    return most


def test_searches_at_once_share_the_gpu_and_the_table_keeps_the_models_order(tmp_path, monkeypatch):
    most = _fake_gpu_searches(monkeypatch, {"sasrec": 3000, "caser": 1200, "hstu": 900})
    out = tmp_path / "limits.csv"
    result = CliRunner().invoke(app, ["max-length", "--memory-gib", "24", "--models", "sasrec,caser,hstu",
                                      "--at-once", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert most[0] == 3  # the three searches ran side by side
    import pandas as pd
    table = pd.read_csv(out)
    assert list(table["model"]) == ["sasrec", "caser", "hstu"] and list(table["largest"]) == [3000, 1200, 900]
    assert set(table["device_name"]) == {"NVIDIA H200"}  # the card the searches ran on, in every row


def test_one_search_at_a_time_unless_asked(tmp_path, monkeypatch):
    most = _fake_gpu_searches(monkeypatch, {"sasrec": 3000, "caser": 1200}, seconds=0.05)
    result = CliRunner().invoke(app, ["max-length", "--memory-gib", "24", "--models", "sasrec,caser"])
    assert result.exit_code == 0, result.output
    assert most[0] == 1


def test_searches_at_once_must_fit_on_the_gpu_together(monkeypatch):
    _fake_gpu_searches(monkeypatch, {"sasrec": 3000}, gpu_mib=80 * 1024)
    result = CliRunner().invoke(app, ["max-length", "--memory-gib", "24", "--models", "sasrec", "--at-once", "4"])
    assert result.exit_code == 2 and "96 GiB in all; the GPU has 80.0 GiB" in result.output
    assert "Traceback" not in result.output


def test_a_failed_search_beside_others_fails_the_command_after_keeping_theirs(tmp_path, monkeypatch):
    _fake_gpu_searches(monkeypatch, {"sasrec": 3000, "caser": "caser at seq_len 512: worker died", "hstu": 900})
    out = tmp_path / "limits.csv"
    result = CliRunner().invoke(app, ["max-length", "--memory-gib", "24", "--models", "sasrec,caser,hstu",
                                      "--at-once", "3", "--out", str(out)])
    assert result.exit_code == 2 and "caser at seq_len 512: worker died" in result.output
    import pandas as pd
    assert list(pd.read_csv(out)["model"]) == ["sasrec", "hstu"]


def test_searches_at_once_are_refused_for_a_prediction():
    result = CliRunner().invoke(app, ["max-length", "--memory-gib", "24", "--models", "sasrec", "--at-once", "2", "--predict"])
    assert result.exit_code == 2 and "a prediction runs on the CPU" in result.output


@pytest.mark.parametrize("boundary", [900, 32300, 40000])
def test_a_bracket_is_probed_first_and_the_search_goes_on_from_what_it_found(boundary):
    probed = []

    def fits(value: int) -> bool:
        probed.append(value)
        return value <= boundary

    good, bad = search_largest(fits, 16, 65536, tolerance=0.01, between=(32256, 32512))
    assert probed[:2] == [32256, 32512] or (boundary < 32256 and probed[:2] == [32256, 16])
    assert good <= boundary < bad and bad - good <= max(1, 0.01 * good)
    if boundary == 32300:  # a right bracket: its two ends settle it
        assert len(probed) == 2


def test_a_bracket_outside_the_search_is_refused():
    with pytest.raises(LimitError, match="not within"):
        search_largest(lambda v: True, 16, 4096, between=(1024, 8192))
    with pytest.raises(LimitError, match="not within"):
        search_largest(lambda v: True, 16, 4096, between=(8, 1024))


@pytest.mark.parametrize("between, message", [
    ("sasrec=100", "is not MODEL=LOW:HIGH"),
    ("sasrec=500:100", "LOW must be positive and below HIGH"),
    ("nosuchmodel=100:200", "nosuchmodel"),
    ("caser=100:200", "which --models does not search"),
])
def test_a_bad_bracket_is_one_line_and_exit_2(monkeypatch, between, message):
    _fake_gpu_searches(monkeypatch, {"sasrec": 3000})
    result = CliRunner().invoke(app, ["max-length", "--memory-gib", "24", "--models", "sasrec", "--between", between])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_a_bracket_reaches_its_models_search_and_the_table(tmp_path, monkeypatch):
    brackets = {}
    _fake_gpu_searches(monkeypatch, {"sasrec": 3000, "caser": 1200}, seconds=0.01, brackets=brackets)
    out = tmp_path / "limits.csv"
    result = CliRunner().invoke(app, ["max-length", "--memory-gib", "24", "--models", "sasrec,caser",
                                      "--between", "caser=1024:2048", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert brackets == {"sasrec": None, "caser": (1024, 2048)}
    import pandas as pd
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table["between"]) == ["", "1024:2048"]


def test_a_bracket_is_refused_for_a_prediction():
    result = CliRunner().invoke(app, ["max-length", "--memory-gib", "24", "--models", "sasrec",
                                      "--between", "sasrec=100:200", "--predict"])
    assert result.exit_code == 2 and "a prediction probes nothing" in result.output
