"""The execution knob: eager, compiled (compile time kept out of every timed step), CUDA graphs."""
import pytest
import torch

from profiler.analysis.series import series_of
from profiler.results.store import read_results
from profiler.run.plan import plan_points
from profiler.run.sweep import SweepRequest
from profiler.run.workload import (
    build_workload,
    capture_failure,
    compile_by_calling,
    step_function,
    training_optimizer,
)
from profiler.trackers.timing import MeasurementBudget


def test_a_compiled_step_computes_what_the_eager_step_computes_and_compiles_in_prepare():
    workload = build_workload("convrec-light", None, "infer", 12, 3, "tiny", "cpu", execution="compile")
    assert workload.step is not workload.eager_step
    workload.prepare()  # the first compiled call: compilation happens here
    compiled = torch.compile(workload.model.predict)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(workload.batch), workload.model.predict(workload.batch))


def test_every_compiled_point_of_a_worker_compiles_past_the_recompile_limit():
    # A worker measures many points of one model: each compiles its own static graph, however many
    # came before (past the limit, torch would run the step eagerly and it would be timed as compiled).
    # torch's own patch, not monkeypatch: setting and restoring the config module's attribute leaves
    # the option hidden for every later compilation in the process.
    with torch._dynamo.config.patch(recompile_limit=1):
        for seq_len in (8, 12, 16):
            workload = build_workload("convrec-light", None, "infer", seq_len, 2, "tiny", "cpu", execution="compile")
            workload.prepare()  # raises where nothing compiled


def test_a_step_that_compiles_nothing_is_an_error_not_a_compiled_point():
    with pytest.raises(RuntimeError, match="compiled no graph"):
        compile_by_calling(lambda: None)


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


def test_the_optimizer_of_a_graph_captured_step_is_capturable_and_an_eager_ones_is_not():
    workload = build_workload("sasrec", "naive", "train", 8, 2, "tiny", "cpu")
    assert not any(group["capturable"] for group in workload.optimizer.param_groups)
    for name in ("sasrec", "bert4rec"):  # one param group, and two (BERT4Rec's decay groups)
        model = build_workload(name, "naive", "train", 8, 2, "tiny", "cpu").model
        optimizer = training_optimizer(model, "cuda-graphs")
        assert optimizer.defaults["capturable"] and len(optimizer.param_groups) >= 1
        assert all(group["capturable"] for group in optimizer.param_groups)
        assert not optimizer.state  # set before any state exists
        assert not any(group["capturable"] for group in training_optimizer(model, "eager").param_groups)


def spy_on_zero_grad(optimizer) -> list:
    calls = []
    zero_grad = optimizer.zero_grad

    def spy(set_to_none=True):
        calls.append(set_to_none)
        zero_grad(set_to_none=set_to_none)

    optimizer.zero_grad = spy
    return calls


def test_the_graph_step_zeroes_gradients_in_place_and_the_eager_step_frees_them():
    workload = build_workload("sasrec", "naive", "train", 8, 2, "tiny", "cpu")
    eager_calls = spy_on_zero_grad(workload.optimizer)
    workload.step()
    assert eager_calls == [True]

    graph_step = step_function("train", workload.model, workload.model.predict, workload.batch, workload.optimizer,
                               "float32", "cpu", grads_in_place=True)
    graph_step()
    params = [p for p in workload.model.parameters() if p.grad is not None]
    addresses = [p.grad.data_ptr() for p in params]
    before = [p.detach().clone() for p in params]
    for _ in range(2):
        graph_step()
    assert eager_calls == [True, False, False, False]
    assert [p.grad.data_ptr() for p in params] == addresses  # the storage a replay writes to stays
    assert any(p.grad.abs().sum() > 0 for p in params)  # and holds this step's gradients
    assert any(not torch.equal(a, p) for a, p in zip(before, params))  # the steps trained


@pytest.mark.parametrize("error, optimizer, expected", [
    (RuntimeError("CUDA error: operation not permitted when stream is capturing\nCUDA kernel errors might be "
                  "asynchronously reported"), torch.optim.Adam([torch.zeros(1)], capturable=True),
     "the step makes the host wait for the GPU (.item(), .cpu(), a data-dependent shape), which a graph cannot "
     "hold (RuntimeError: CUDA error: operation not permitted when stream is capturing)"),
    (RuntimeError("Attempting CUDA graph capture of step() for an instance of SGD"), torch.optim.SGD([torch.zeros(1)]),
     "its optimizer, SGD, has no capturable option (torch.optim's Adam and AdamW have one) "
     "(RuntimeError: Attempting CUDA graph capture of step() for an instance of SGD)"),
    (ValueError("\n  something else  \nmore"), None, "ValueError: something else"),
])
def test_a_failed_capture_says_in_one_line_what_made_it_fail(error, optimizer, expected):
    message = capture_failure(error, optimizer)
    assert message == f"the step cannot be captured as a CUDA graph: {expected}"
    assert "\n" not in message
