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


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def device_sm_count(device: torch.device, default: int = 132) -> int:
    """SMs of a CUDA device (cached per device); `default` (an H100's count) elsewhere."""
    if device.type != "cuda":
        return default
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
