"""The arithmetic a point runs with, set explicitly and the same way for both families.

PyTorch's defaults differ by operation: cuDNN convolutions use TF32 tensor cores, matrix products
use full fp32. Left alone, an "fp32" comparison would give the convolutional models tensor cores
and the attention models none. So every dtype sets both switches:

- ``float32``: weights, activations and arithmetic in fp32; TF32 off for convolutions and matmuls.
- ``tf32``: fp32 tensors, TF32 tensor cores for both.
- ``bf16``: weights, inputs and activations in bfloat16 (integer ids stay integers).
- ``amp-bf16``: fp32 weights, the forward under ``torch.autocast`` to bfloat16 (mixed precision).
"""
import contextlib

import torch
from torch import nn

DTYPES = ("float32", "tf32", "bf16", "amp-bf16")


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


def matmul_arithmetic(dtype: str) -> tuple[torch.dtype, bool]:
    """The operands and TF32 switch of the dtype's matrix products, for its peak rate: autocast
    runs the products of ``amp-bf16`` in bfloat16, as ``bf16`` runs them."""
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; choose from {list(DTYPES)}")
    if dtype in ("bf16", "amp-bf16"):
        return torch.bfloat16, False
    return torch.float32, dtype == "tf32"


def cast_for(dtype: str, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Casts the model in place and returns the batch in the dtype's storage type."""
    if dtype != "bf16":
        return batch
    model.to(torch.bfloat16)
    return {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in batch.items()}


def forward_context(dtype: str, device: str):
    """What the forward runs under: autocast for mixed precision, nothing otherwise."""
    if dtype == "amp-bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()
