"""Rotary position embedding, neox / rotate_half style (cache builder, torch reference, dispatcher)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from semipd.engine.runtime.kernels._dispatch import check_rope_args, use_triton


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: Mapping[str, Any]) -> torch.Tensor:
    """Llama 3.1 frequency scaling, the same arithmetic as HF transformers."""
    try:
        factor = float(scaling["factor"])
        low_freq_factor = float(scaling["low_freq_factor"])
        high_freq_factor = float(scaling["high_freq_factor"])
        old_context_len = float(scaling["original_max_position_embeddings"])
    except KeyError as e:
        raise ValueError(f"rope scaling llama3: missing field {e.args[0]!r}") from None
    if high_freq_factor == low_freq_factor:
        raise ValueError("rope scaling llama3: high_freq_factor must differ from low_freq_factor")
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


def build_rope_cache(
    head_dim: int,
    max_pos: int,
    theta: float,
    scaling: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The ``[max_pos, head_dim]`` table ``cat(cos, sin)`` (head_dim/2 columns each).

    `scaling` is a HF ``rope_scaling`` / ``rope_parameters`` dict: ``rope_type`` (or ``type``)
    ``"default"``, ``"linear"`` (``factor``) or ``"llama3"`` (``factor``, ``low_freq_factor``,
    ``high_freq_factor``, ``original_max_position_embeddings``); None means default.
    Frequencies and angles are computed in fp32 as HF does; the result is cast to `dtype`.
    """
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even number, got {head_dim}")
    if max_pos <= 0:
        raise ValueError(f"max_pos must be positive, got {max_pos}")
    if theta <= 0:
        raise ValueError(f"theta must be positive, got {theta}")
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / head_dim
    inv_freq = 1.0 / (theta**exponent)
    rope_type = "default" if scaling is None else scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, scaling)
    elif rope_type == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif rope_type != "default":
        raise ValueError(f"rope scaling rope_type {rope_type!r} is not supported (default, linear, llama3)")
    positions = torch.arange(max_pos, device=device, dtype=torch.float)
    freqs = torch.outer(positions, inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(dtype)


def apply_rope_torch(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [T, Hq, D] and k [T, Hkv, D] in place (fp32 arithmetic); returns (q, k)."""
    check_rope_args(q, k, positions, cos_sin_cache)
    half = q.shape[-1] // 2
    cos_sin = cos_sin_cache[positions.long()].float()
    cos, sin = cos_sin[:, None, :half], cos_sin[:, None, half:]
    for x in (q, k):
        xf = x.float()
        x1, x2 = xf[..., :half], xf[..., half:]
        x.copy_(torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1))
    return q, k


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox-style RoPE in place on q and k at `positions`: Triton on CUDA, torch elsewhere."""
    if use_triton(q):
        from semipd.engine.runtime.kernels.triton_rope import apply_rope_triton

        return apply_rope_triton(q, k, positions, cos_sin_cache)
    return apply_rope_torch(q, k, positions, cos_sin_cache)
