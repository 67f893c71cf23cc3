"""The arithmetic knob: explicit TF32 switches, bf16 storage, autocast, and a point key per dtype."""
import pytest
import torch

from profiler.run.plan import plan_points
from profiler.run.precision import apply_precision, precision_flags
from profiler.run.workload import build_workload, step_costs


@pytest.mark.parametrize("dtype, tf32", [("float32", False), ("tf32", True), ("bf16", False), ("amp-bf16", False)])
def test_every_dtype_sets_both_tf32_switches_the_same_way(dtype, tf32):
    apply_precision(dtype)
    assert precision_flags() == {"matmul_tf32": tf32, "cudnn_tf32": tf32}
    apply_precision("float32")


def test_an_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="Unknown dtype 'fp8'"):
        apply_precision("fp8")


def test_bf16_stores_weights_and_float_inputs_in_bfloat16_and_halves_the_footprint():
    full = build_workload("sasrec", "naive", "train", 16, 4, "tiny", "cpu", dtype="float32")
    half = build_workload("sasrec", "naive", "train", 16, 4, "tiny", "cpu", dtype="bf16")
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    assert half.batch["seq"].dtype == torch.int64  # item ids stay integers
    ratio = step_costs(half).tensor_footprint_mib / step_costs(full).tensor_footprint_mib
    assert 0.45 < ratio < 0.55


def test_amp_keeps_fp32_weights_and_runs_the_forward_in_bfloat16():
    workload = build_workload("sasrec", "naive", "train", 16, 4, "tiny", "cpu", dtype="amp-bf16")
    assert {p.dtype for p in workload.model.parameters()} == {torch.float32}
    seen = []
    hook = workload.model.blocks[0].ffn.fc1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    workload.step()
    hook.remove()
    assert seen == [torch.bfloat16]


def test_each_dtype_is_its_own_point():
    points = plan_points(["sasrec"], [8], ["train"], ["naive"], 4, "tiny", "cpu", dtypes=("float32", "bf16"))
    assert [p.dtype for p in points] == ["float32", "bf16"] and points[0].key != points[1].key
    assert points[1].label == "sasrec[naive] bf16 train L=8"
