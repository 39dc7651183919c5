"""Fused SiLU-and-multiply of the gated MLP (torch reference and dispatcher)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from semipd.engine.runtime.kernels._dispatch import use_triton


def silu_and_mul_torch(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2I] = cat(gate, up) -> silu(gate) * up [..., I], computed in fp32, rounded once."""
    if x.shape[-1] % 2:
        raise ValueError(f"silu_and_mul: last dim must be even, got {x.shape[-1]}")
    half = x.shape[-1] // 2
    xf = x.float()
    return (F.silu(xf[..., :half]) * xf[..., half:]).to(x.dtype)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for x = cat(gate, up): Triton on CUDA, torch elsewhere."""
    if use_triton(x):
        from semipd.engine.runtime.kernels.triton_activation import silu_and_mul_triton

        return silu_and_mul_triton(x)
    return silu_and_mul_torch(x)
