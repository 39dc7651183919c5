"""RMSNorm with an optional fused residual add (torch reference and dispatcher)."""

from __future__ import annotations

import torch

from semipd.engine.runtime.kernels._dispatch import use_triton


def rms_norm_torch(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Normalise over the last dim as HF Llama does: fp32 statistics, ``weight * x_normed.to(dtype)``.

    With `residual`, first forms ``s = x + residual`` rounded to x's dtype (as the HF model
    does when it adds the residual stream) and returns ``(rms_norm(s), s)``.
    """
    dtype = x.dtype
    if residual is not None:
        x = (x + residual).to(dtype)
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    y = (weight.float() * normed.to(dtype).float()).to(dtype)
    if residual is not None:
        return y, x
    return y


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of x (fused with ``x + residual`` when given): Triton on CUDA, torch elsewhere."""
    if use_triton(x):
        from semipd.engine.runtime.kernels.triton_norm import rms_norm_triton

        return rms_norm_triton(x, weight, eps, residual)
    return rms_norm_torch(x, weight, eps, residual)
