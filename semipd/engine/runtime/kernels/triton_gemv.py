"""Skinny matmul ``y = x W^T (+ b)`` for few rows (decode batches), in Triton.

One program computes ``BLOCK_N`` output columns for all (at most 16) rows of ``x``,
streaming its ``BLOCK_N`` rows of ``W [N, K]`` once along K: the work is bound by reading
``W``. With ``dot`` the rows of ``x`` are padded to 16 for the tensor cores; without, one
row is reduced on the CUDA cores. fp32 accumulation, output in x's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from semipd.engine.runtime.kernels._dispatch import check_launch_config

MAX_ROWS = 16


@dataclass(frozen=True)
class GemvConfig:
    """Tile of the skinny matmul; ``dot=False`` handles a single row only."""

    block_n: int = 32
    block_k: int = 256
    num_warps: int = 4
    num_stages: int = 4
    dot: bool = True

    def __post_init__(self) -> None:
        check_launch_config(self, ("block_n", "block_k"))


CANDIDATES = (
    GemvConfig(16, 256, 4, 4), GemvConfig(32, 256, 4, 4), GemvConfig(32, 128, 4, 4), GemvConfig(64, 128, 4, 3),
    GemvConfig(16, 512, 4, 3), GemvConfig(16, 256, 4, 4, dot=False), GemvConfig(32, 128, 4, 4, dot=False),
    GemvConfig(16, 512, 4, 3, dot=False),
)
"""Tiles `SkinnyLinearPlan.tune` tries (shared memory well under an H100's 227 KiB)."""


@triton.jit(do_not_specialize=["M"])
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                 HAS_BIAS: tl.constexpr, DOT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 NUM_STAGES: tl.constexpr):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
    if DOT:
        offs_m = tl.arange(0, 16)
        m_mask = offs_m < M
        acc = tl.zeros([16, BLOCK_N], dtype=tl.float32)
        for k in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):
            offs_k = k + tl.arange(0, BLOCK_K)
            k_mask = offs_k < K
            w = tl.load(w_rows + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :],
                        other=0.0)
            acc = tl.dot(x, tl.trans(w), acc)
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=m_mask[:, None] & n_mask[None, :])
    else:
        acc1 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for k in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):
            offs_k = k + tl.arange(0, BLOCK_K)
            k_mask = offs_k < K
            w = tl.load(w_rows + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
            x = tl.load(x_ptr + offs_k, mask=k_mask, other=0.0)
            acc1 += w.to(tl.float32) * x.to(tl.float32)[None, :]
        out = tl.sum(acc1, axis=1)
        if HAS_BIAS:
            out += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs_n, out.to(y_ptr.dtype.element_ty), mask=n_mask)


def gemv_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                config: GemvConfig | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] (M <= 16; M == 1 unless ``config.dot``), weight [N, K], bias [N] -> [M, N] in x's dtype
    (written into `out` when given: [M, N], unit stride along N)."""
    m, k = x.shape
    n = weight.shape[0]
    cfg = config or GemvConfig()
    if m > MAX_ROWS or (m > 1 and not cfg.dot):
        raise ValueError(f"gemv_triton takes at most {MAX_ROWS} rows (1 without dot), got {m}")
    if x.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError("gemv_triton: K must be contiguous in x and weight")
    if out is not None and (out.shape != (m, n) or out.stride(1) != 1):
        raise ValueError(f"gemv_triton: out must be [{m}, {n}] with unit stride along N")
    y = out if out is not None else torch.empty(m, n, dtype=x.dtype, device=x.device)
    _gemv_kernel[(triton.cdiv(n, cfg.block_n),)](
        x, weight, bias if bias is not None else weight, y, m, n, k, x.stride(0), weight.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, DOT=cfg.dot, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        NUM_STAGES=cfg.num_stages, num_warps=cfg.num_warps,
    )
    return y
