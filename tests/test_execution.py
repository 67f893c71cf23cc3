"""The execution knob: eager, compiled (compile time kept out of every timed step), CUDA graphs."""
import pytest
import torch

from profiler.analysis.series import series_of
from profiler.results.store import read_results
from profiler.run.plan import plan_points
from profiler.run.sweep import SweepRequest
from profiler.run.workload import build_workload
from profiler.trackers.timing import MeasurementBudget


def test_a_compiled_step_computes_what_the_eager_step_computes_and_compiles_in_prepare():
    workload = build_workload("convrec-light", None, "infer", 12, 3, "tiny", "cpu", execution="compile")
    assert workload.step is not workload.eager_step
    workload.prepare()  # the first compiled call: compilation happens here
    compiled = torch.compile(workload.model.predict)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(workload.batch), workload.model.predict(workload.batch))


def test_cuda_graphs_and_unknown_executions_are_refused_where_they_cannot_run():
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        build_workload("sasrec", "naive", "train", 8, 2, "tiny", "cpu", execution="cuda-graphs")
    with pytest.raises(ValueError, match="Unknown execution 'jit'"):
        build_workload("sasrec", "naive", "train", 8, 2, "tiny", "cpu", execution="jit")
    request = SweepRequest(["sasrec"], [8], ["train"], ["naive"], 2, "tiny", "cpu", 0, MeasurementBudget(), None,
                           False, 60.0, executions=["cuda-graphs"])
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        request.validate()


def test_each_execution_is_its_own_point_and_series():
    points = plan_points(["sasrec"], [8, 16], ["train"], ["naive"], 4, "tiny", "cpu", executions=("eager", "compile"))
    assert [(p.execution, p.seq_len) for p in points] == [("eager", 8), ("eager", 16), ("compile", 8), ("compile", 16)]
    assert points[0].series != points[2].series
    assert points[2].label == "sasrec[naive] compile train L=8"


def test_a_results_file_from_before_the_knob_reads_as_eager():
    frame = read_results("results/h100-grid.csv")
    assert set(frame["execution"]) == {"eager"} and set(frame["dtype"]) == {"float32"}
    assert len(series_of(frame)) == len(frame.groupby(["model", "attention", "mode"]))
