"""When the dispatchers use Triton (CUDA tensors, and only if triton is installed), and the
checks every kernel's launch configuration shares."""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

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


def check_launch_config(config: Any, tiles: tuple[str, ...], at_least_one: tuple[str, ...] = ("num_stages",)) -> None:
    """ValueError naming the field unless every field in `tiles` is a power of two >= 16,
    ``num_warps`` is a power of two <= 16 and every field in `at_least_one` is >= 1."""
    for name in tiles:
        value = getattr(config, name)
        if value < 16 or value & (value - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {value}")
    if config.num_warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"num_warps must be a power of two <= 16, got {config.num_warps}")
    for name in at_least_one:
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")


def check_rope_args(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor) -> None:
    """Raise ValueError unless q [T, Hq, D], k [T, Hkv, D], positions [T] and the [max_pos, D] cache agree."""
    if q.dim() != 3 or k.dim() != 3:
        raise ValueError(f"apply_rope: q and k must be [T, H, D], got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[0] != positions.shape[0]:
        raise ValueError("apply_rope: q, k and positions must have the same number of tokens")
    if q.shape[-1] != k.shape[-1] or q.shape[-1] != cos_sin_cache.shape[-1]:
        raise ValueError("apply_rope: head_dim of q, k and cos_sin_cache must match")
