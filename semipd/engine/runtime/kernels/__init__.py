"""Fused kernels of the model: each op has a torch reference ``<op>_torch``, a Triton
implementation ``<op>_triton`` and a dispatcher ``<op>`` (Triton for CUDA tensors when
triton imports, the torch reference otherwise).

The ``*_triton`` names and the attention kernels load lazily, so importing this package
never imports triton.
"""

from __future__ import annotations

import importlib
from typing import Any

from semipd.engine.runtime.kernels._dispatch import triton_available, use_triton
from semipd.engine.runtime.kernels.activation import silu_and_mul, silu_and_mul_torch
from semipd.engine.runtime.kernels.kvcache import store_kvcache, store_kvcache_torch
from semipd.engine.runtime.kernels.norm import rms_norm, rms_norm_torch
from semipd.engine.runtime.kernels.rope import apply_rope, apply_rope_torch, build_rope_cache
from semipd.engine.runtime.kernels.rope_store import rope_and_store_kvcache, rope_and_store_kvcache_torch

_LAZY: dict[str, str] = {
    "rms_norm_triton": "semipd.engine.runtime.kernels.triton_norm",
    "apply_rope_triton": "semipd.engine.runtime.kernels.triton_rope",
    "store_kvcache_triton": "semipd.engine.runtime.kernels.triton_kvcache",
    "rope_and_store_kvcache_triton": "semipd.engine.runtime.kernels.triton_rope_store",
    "sample_tokens_triton": "semipd.engine.runtime.kernels.triton_sampling",
    "silu_and_mul_triton": "semipd.engine.runtime.kernels.triton_activation",
    "prefill_attention_triton": "semipd.engine.runtime.kernels.triton_prefill_attention",
    "decode_attention_triton": "semipd.engine.runtime.kernels.triton_decode_attention",
}

__all__ = [
    "apply_rope",
    "apply_rope_torch",
    "build_rope_cache",
    "rms_norm",
    "rms_norm_torch",
    "rope_and_store_kvcache",
    "rope_and_store_kvcache_torch",
    "silu_and_mul",
    "silu_and_mul_torch",
    "store_kvcache",
    "store_kvcache_torch",
    "triton_available",
    "use_triton",
]
"""Eager names only: a star import must not import triton (the lazy names are in `_LAZY`)."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'semipd.engine.runtime.kernels' has no attribute {name!r}")
