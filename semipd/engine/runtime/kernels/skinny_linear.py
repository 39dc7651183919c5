"""`SkinnyLinearPlan`: which kernel computes ``x W^T`` for decode-sized inputs (at most 16 rows).

cuBLAS picks its own kernels for skinny shapes, and on an H100 some of them stream the
weights well below the memory bandwidth (Llama-3.1-8B's 4096 x 4096 output projection at
one row: about half of it). `tune` times, on the device and under CUDA graphs, cuBLAS
against a few tiles of the Triton kernel of `semipd.engine.runtime.kernels.triton_gemv` for every
weight shape and row bucket (1, 2, 4, 8, 16), and keeps a Triton tile only where it beats
cuBLAS by a clear margin. `linear` then dispatches: inputs of more rows, other devices,
float32 weights and untuned shapes take ``F.linear``. Rows are rounded up to their bucket
for the choice, so a batch and its CUDA-graph bucket run the same kernel.

Known limit: each timing repeats calls on one weight, so a weight smaller than the L2 cache
(50 MiB on an H100) is timed L2-resident, unlike in a model whose layers each read their own
weights from memory; choices for such shapes may differ from what cold timings would pick.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from semipd.engine.runtime.kernels._dispatch import use_triton

if TYPE_CHECKING:
    from semipd.engine.runtime.kernels.triton_gemv import GemvConfig

ROW_BUCKETS = (1, 2, 4, 8, 16)


def row_bucket(rows: int) -> int:
    """The smallest bucket of `ROW_BUCKETS` holding `rows` (rows must be 1..16)."""
    for b in ROW_BUCKETS:
        if rows <= b:
            return b
    raise ValueError(f"rows must be in 1..{ROW_BUCKETS[-1]}, got {rows}")


@dataclass(frozen=True)
class Timing:
    """One tuned (shape, rows) case: cuBLAS and best Triton time (us) and the tile kept (None: cuBLAS)."""

    n: int
    k: int
    rows: int
    cublas_us: float
    triton_us: float | None
    chosen: str


class SkinnyLinearPlan:
    """Kernel choice per (out features, in features, row bucket); empty until `tune` runs."""

    def __init__(self) -> None:
        self._choice: dict[tuple[int, int, int], GemvConfig] = {}
        self.timings: list[Timing] = []

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """``x W^T (+ b)`` for 2-D x, through the tuned kernel where there is one (into `out` when given)."""
        rows = x.shape[0]
        if self._choice and 0 < rows <= ROW_BUCKETS[-1] and x.dim() == 2 and use_triton(x):
            cfg = self._choice.get((weight.shape[0], weight.shape[1], row_bucket(rows)))
            if cfg is not None and (rows == 1 or cfg.dot):
                from semipd.engine.runtime.kernels.triton_gemv import gemv_triton

                return gemv_triton(x, weight, bias, cfg, out=out)
        if out is None:
            return F.linear(x, weight, bias)
        if bias is None:
            return torch.mm(x, weight.t(), out=out)
        return torch.addmm(bias, x, weight.t(), out=out)

    @torch.inference_mode()
    def tune(self, weights: Iterable[torch.Tensor], max_rows: int = ROW_BUCKETS[-1], margin: float = 0.05) -> None:
        """Time cuBLAS and the Triton tiles for each distinct [N, K] of `weights` (CUDA, half dtypes) and
        row bucket up to `max_rows`; keep a tile where it is faster than cuBLAS by more than `margin` (and
        its product agrees with cuBLAS's)."""
        from semipd.engine.runtime.kernels.triton_gemv import CANDIDATES, gemv_triton

        shapes = {}
        for w in weights:
            if w.is_cuda and w.dtype in (torch.float16, torch.bfloat16) and w.dim() == 2:
                shapes.setdefault((w.shape[0], w.shape[1], w.dtype), w)
        for (n, k, _), w in shapes.items():
            for rows in (b for b in ROW_BUCKETS if b <= max_rows):
                x = torch.randn(rows, k, device=w.device, dtype=w.dtype)
                cublas = _graph_time(lambda x=x, w=w: F.linear(x, w))
                best, best_us = None, None
                for cfg in CANDIDATES:
                    if rows > 1 and not cfg.dot:
                        continue
                    try:
                        us = _graph_time(lambda x=x, w=w, cfg=cfg: gemv_triton(x, w, None, cfg))
                    except Exception:  # a tile the device cannot hold (shared memory): skip it
                        continue
                    if best_us is None or us < best_us:
                        best, best_us = cfg, us
                keep = best is not None and best_us < cublas * (1 - margin) and _agrees(
                    gemv_triton(x, w, None, best), F.linear(x, w))
                if keep:
                    self._choice[(n, k, rows)] = best
                self.timings.append(Timing(n, k, rows, cublas, best_us, repr(best) if keep else "cublas"))


def _agrees(got: torch.Tensor, ref: torch.Tensor) -> bool:
    """Same product up to accumulation order (a safety net: a tile that computes wrong is never kept)."""
    return bool(((got.float() - ref.float()).abs().max() <= 1e-2 * ref.float().abs().max() + 1e-3).item())


def _graph_time(fn: Callable[[], object], reps: int = 8, replays: int = 3) -> float:
    """Microseconds per call of `fn`, replayed from a CUDA graph of `reps` calls (no launch overhead)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / (reps * replays)
