"""The arithmetic a point runs with, set explicitly and the same way for both families.

PyTorch's defaults differ by operation: cuDNN convolutions use TF32 tensor cores, matrix products
use full fp32. Left alone, an "fp32" comparison would give the convolutional models tensor cores
and the attention models none. ``float32`` turns TF32 off for both; ``tf32`` turns it on for both.
"""
import torch

DTYPES = ("float32", "tf32")


def apply_precision(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; choose from {list(DTYPES)}")
    tf32 = dtype == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


def precision_flags() -> dict:
    """The switches as they are now, for the row: what the step really ran with."""
    return {
        "matmul_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32),
    }
