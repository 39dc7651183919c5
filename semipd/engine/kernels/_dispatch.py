"""When the dispatchers use Triton: CUDA tensors, and only if triton is installed."""

from __future__ import annotations

import functools
import importlib.util

import torch


@functools.cache
def triton_available() -> bool:
    """True when the `triton` package can be imported (checked once)."""
    return importlib.util.find_spec("triton") is not None


def use_triton(x: torch.Tensor) -> bool:
    """Dispatch rule of every op: Triton for CUDA tensors, the torch reference otherwise."""
    return x.is_cuda and triton_available()
