"""Check every Triton kernel against its torch reference on a CUDA GPU, over many random shapes.

References run in fp32 on the same bf16 inputs. A case passes when both the max-norm and
the L2-norm relative errors are within bf16 bounds. Prints a table; exits 1 on any failure.

    python scripts/check_kernels_gpu.py [--json results.json] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from semipd.engine.runtime.attention import get_backend
from semipd.engine.runtime.attention.torch_ref import paged_decode_attention_torch, paged_prefill_attention_torch
from semipd.engine.runtime.kernels import (
    apply_rope_torch,
    build_rope_cache,
    rms_norm_torch,
    silu_and_mul_torch,
    store_kvcache_torch,
)
from semipd.engine.runtime.kernels.paged_batch import PagedBatch, make_paged_batch
from semipd.engine.runtime.kernels.triton_activation import silu_and_mul_triton
from semipd.engine.runtime.kernels.triton_decode_attention import decode_attention_triton
from semipd.engine.runtime.kernels.triton_kvcache import store_kvcache_triton
from semipd.engine.runtime.kernels.triton_norm import rms_norm_triton
from semipd.engine.runtime.kernels.triton_rope import apply_rope_triton

MAX_REL_TOL = 2e-2
"""max|out - ref| / max|ref|: a few bf16 ulps (2^-8 each) of the largest value."""
L2_REL_TOL = 1e-2
"""||out - ref||_2 / ||ref||_2."""
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


@dataclass
class Result:
    kernel: str
    case: str
    max_rel: float
    l2_rel: float
    seconds: float
    passed: bool
    error: str = ""


def _errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    out, ref = out.float(), ref.float()
    if not torch.isfinite(out).all():
        return float("inf"), float("inf")
    diff = out - ref
    scale = ref.abs().max().clamp_min(1e-6)
    return float(diff.abs().max() / scale), float(diff.norm() / ref.norm().clamp_min(1e-6))


def _fp32_batch(batch: PagedBatch) -> PagedBatch:
    """The same batch with fp32 tensors (the reference's inputs)."""
    kw = {f: getattr(batch, f) for f in batch.__dataclass_fields__}
    for f in ("q", "k", "v", "k_cache", "v_cache"):
        kw[f] = kw[f].float()
    return PagedBatch(**kw)


def _attention_case(
    seq_lens: list[int], q_lens: list[int], heads: tuple[int, int], head_dim: int, block: int, seed: int
):
    def run() -> tuple[torch.Tensor, torch.Tensor]:
        batch = make_paged_batch(seq_lens, q_lens, heads[0], heads[1], head_dim, block, torch.bfloat16, "cuda", seed)
        ref_batch = _fp32_batch(batch)
        meta, scale = batch.metadata(), head_dim**-0.5
        out = get_backend("triton").forward(batch.q, batch.k, batch.v, batch.k_cache, batch.v_cache, meta, scale)
        store_kvcache_torch(ref_batch.k, ref_batch.v, ref_batch.k_cache, ref_batch.v_cache, batch.slot_mapping)
        ref = paged_prefill_attention_torch(
            ref_batch.q,
            ref_batch.k_cache,
            ref_batch.v_cache,
            batch.block_tables,
            batch.seq_lens,
            batch.cu_seqlens_q,
            scale,
        )
        return out, ref

    return run


def _decode_case(seq_lens: list[int], heads: tuple[int, int], head_dim: int, block: int, splits: int | None, seed: int):
    def run() -> tuple[torch.Tensor, torch.Tensor]:
        batch = make_paged_batch(
            seq_lens, [0] * len(seq_lens), heads[0], heads[1], head_dim, block, torch.bfloat16, "cuda", seed
        )
        q = torch.randn(len(seq_lens), heads[0], head_dim, device="cuda", dtype=torch.bfloat16)
        bound = max(seq_lens) + 37  # a loose static bound, as under CUDA graphs
        scale = head_dim**-0.5
        args = (batch.k_cache, batch.v_cache, batch.block_tables, batch.seq_lens)
        out = decode_attention_triton(q, *args, bound, scale, num_splits=splits)
        ref = paged_decode_attention_torch(
            q.float(), batch.k_cache.float(), batch.v_cache.float(), batch.block_tables, batch.seq_lens, bound, scale
        )
        return out, ref

    return run


def _decode_graph_case(seed: int):
    """Capture decode in a CUDA graph, change lengths and queries, replay."""

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        lens = [4000, 17, 1, 2048, 777, 3000, 64, 1025]
        batch = make_paged_batch(lens, [0] * len(lens), 32, 8, 128, 16, torch.bfloat16, "cuda", seed)
        q = torch.randn(len(lens), 32, 128, device="cuda", dtype=torch.bfloat16)
        args = (q, batch.k_cache, batch.v_cache, batch.block_tables, batch.seq_lens, 4096, 128**-0.5)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            decode_attention_triton(*args)  # compile outside the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = decode_attention_triton(*args)
        batch.seq_lens.copy_(torch.tensor([4096, 5, 2, 1, 4095, 100, 0, 1024], dtype=torch.int32))
        q.normal_()
        graph.replay()
        torch.cuda.synchronize()
        ref = paged_decode_attention_torch(
            q.float(), batch.k_cache.float(), batch.v_cache.float(), batch.block_tables, batch.seq_lens, 4096, 128**-0.5
        )
        return out.clone(), ref

    return run


def _rms_case(rows: int, cols: int, residual: bool, seed: int):
    def run() -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator(device="cuda").manual_seed(seed)
        x = torch.randn(rows, cols, device="cuda", generator=gen).bfloat16()
        w = torch.randn(cols, device="cuda", generator=gen).bfloat16()
        r = torch.randn(rows, cols, device="cuda", generator=gen).bfloat16() if residual else None
        out, ref = rms_norm_triton(x, w, 1e-6, r), rms_norm_torch(x, w, 1e-6, r)
        if residual:
            return torch.cat([out[0], out[1]]), torch.cat([ref[0], ref[1]])
        return out, ref

    return run


def _rope_case(tokens: int, heads: tuple[int, int], head_dim: int, seed: int):
    def run() -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator(device="cuda").manual_seed(seed)
        cache = build_rope_cache(head_dim, 32768, 500000.0, LLAMA3, "cuda")
        qkv = torch.randn(tokens, (heads[0] + 2 * heads[1]) * head_dim, device="cuda", generator=gen).bfloat16()
        q = qkv[:, : heads[0] * head_dim].view(tokens, heads[0], head_dim)
        k = qkv[:, heads[0] * head_dim : (heads[0] + heads[1]) * head_dim].view(tokens, heads[1], head_dim)
        pos = torch.randint(0, 32768, (tokens,), device="cuda", generator=gen)
        rq, rk = apply_rope_torch(q.float(), k.float(), pos, cache)
        apply_rope_triton(q, k, pos, cache)
        return torch.cat([q.flatten(), k.flatten()]), torch.cat([rq.flatten(), rk.flatten()])

    return run


def _store_case(tokens: int, heads: int, head_dim: int, seed: int):
    def run() -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator(device="cuda").manual_seed(seed)
        k = torch.randn(tokens, heads, head_dim, device="cuda", generator=gen).bfloat16()
        v = torch.randn(tokens, heads, head_dim, device="cuda", generator=gen).bfloat16()
        slots = torch.randperm(4 * tokens, device="cuda", generator=gen)[:tokens]
        slots[::7] = -1
        caches = [torch.randn(tokens, 4, heads, head_dim, device="cuda", generator=gen).bfloat16() for _ in range(2)]
        refs = [c.clone() for c in caches]
        store_kvcache_triton(k, v, *caches, slots)
        store_kvcache_torch(k, v, *refs, slots)
        return torch.cat([c.flatten() for c in caches]), torch.cat([c.flatten() for c in refs])

    return run


def _silu_case(rows: int, inter: int, seed: int):
    def run() -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator(device="cuda").manual_seed(seed)
        x = torch.randn(rows, 2 * inter, device="cuda", generator=gen).bfloat16()
        return silu_and_mul_triton(x), silu_and_mul_torch(x.float())

    return run


def build_cases(seed: int) -> list[tuple[str, str, Callable[[], tuple[torch.Tensor, torch.Tensor]]]]:
    """(kernel, case description, runner) for every check."""
    rng = random.Random(seed)
    cases = []
    head_cfgs = [((32, 8), 128), ((32, 4), 128), ((16, 4), 64), ((8, 8), 64), ((64, 8), 128)]
    for i in range(14):
        heads, head_dim = head_cfgs[i % len(head_cfgs)]
        block = rng.choice([16, 16, 32])
        n = rng.randint(1, 6)
        seq_lens, q_lens = [], []
        for _ in range(n):
            kind = rng.choice(["prefill", "extend", "edge", "one"])
            if kind == "prefill":
                s = rng.randint(1, 3000)
                q = s
            elif kind == "extend":
                s = rng.randint(2, 6000)
                q = rng.randint(1, s)
            elif kind == "edge":
                s = block * rng.randint(1, 40) + rng.choice([-1, 0, 1])
                q = rng.choice([1, s, max(1, s - block)])
            else:
                s, q = rng.randint(1, 2000), 1
            seq_lens.append(max(1, s))
            q_lens.append(min(max(1, q), max(1, s)))
        desc = f"H{heads[0]}/{heads[1]} D{head_dim} bs{block} seqs={seq_lens} new={q_lens}"
        cases.append(("prefill", desc, _attention_case(seq_lens, q_lens, heads, head_dim, block, seed + i)))
    long_cases = [
        ([32768], [1024], (32, 8), 128),
        ([16384], [16384], (32, 8), 128),
        ([32000, 8192], [512, 8192], (32, 4), 128),
        ([8191, 1], [8191, 1], (16, 4), 64),
    ]
    for seq_lens, q_lens, heads, head_dim in long_cases:
        desc = f"H{heads[0]}/{heads[1]} D{head_dim} bs16 seqs={seq_lens} new={q_lens}"
        cases.append(("prefill", desc, _attention_case(seq_lens, q_lens, heads, head_dim, 16, seed)))
    for i in range(12):
        heads, head_dim = head_cfgs[i % len(head_cfgs)]
        block = rng.choice([16, 32])
        batch = rng.choice([1, 3, 17, 64])
        top = rng.choice([40, 600, 5000] + ([32768] if batch < 17 else []))
        seq_lens = [rng.choice([1, block, block + 1, rng.randint(1, top)]) for _ in range(batch)]
        splits = rng.choice([None, None, 1, 4, 16])
        desc = f"H{heads[0]}/{heads[1]} D{head_dim} bs{block} B{batch} max={max(seq_lens)} splits={splits or 'auto'}"
        cases.append(("decode", desc, _decode_case(seq_lens, heads, head_dim, block, splits, seed + i)))
    cases.append(
        ("decode", "B2 32k context H32/8 D128 auto", _decode_case([32768, 32767], (32, 8), 128, 16, None, seed))
    )
    cases.append(
        (
            "decode",
            "B4 32k context H32/4 D128 splits=32",
            _decode_case([32768, 1, 16, 20000], (32, 4), 128, 16, 32, seed),
        )
    )
    cases.append(("decode", "CUDA graph replay, new lengths", _decode_graph_case(seed)))
    for rows, cols, res in [(1, 4096, False), (77, 4096, True), (300, 5120, True), (513, 128, False)]:
        cases.append(("rms_norm", f"{rows}x{cols} residual={res}", _rms_case(rows, cols, res, seed)))
    for tokens, heads, head_dim in [(1, (32, 8), 128), (333, (32, 8), 128), (100, (28, 4), 64)]:
        cases.append(
            ("rope", f"T{tokens} H{heads[0]}/{heads[1]} D{head_dim} llama3", _rope_case(tokens, heads, head_dim, seed))
        )
    for tokens, heads, head_dim in [(1, 8, 128), (257, 8, 128), (64, 4, 64)]:
        cases.append(("store_kvcache", f"T{tokens} H{heads} D{head_dim}", _store_case(tokens, heads, head_dim, seed)))
    for rows, inter in [(1, 14336), (129, 14336), (7, 18944)]:
        cases.append(("silu_and_mul", f"{rows}x{inter}", _silu_case(rows, inter, seed)))
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("check_kernels_gpu: no CUDA device", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    results = []
    for kernel, desc, run in build_cases(args.seed):
        t0 = time.perf_counter()
        try:
            out, ref = run()
            torch.cuda.synchronize()
            max_rel, l2_rel = _errors(out, ref)
            passed, error = max_rel <= MAX_REL_TOL and l2_rel <= L2_REL_TOL, ""
        except Exception as e:  # a crash is a failure of this case, the others still run
            max_rel = l2_rel = float("nan")
            passed, error = False, f"{type(e).__name__}: {e}"[:300]
        results.append(Result(kernel, desc, max_rel, l2_rel, time.perf_counter() - t0, passed, error))
        r = results[-1]
        mark = "ok  " if r.passed else "FAIL"
        print(
            f"{mark} {r.kernel:13s} max_rel={r.max_rel:9.2e} l2_rel={r.l2_rel:9.2e} {r.seconds:6.2f}s  {r.case}"
            + (f"  [{r.error}]" if r.error else ""),
            flush=True,
        )
    failed = [r for r in results if not r.passed]
    print(
        f"\n{len(results) - len(failed)}/{len(results)} passed on {torch.cuda.get_device_name()} "
        f"(torch {torch.__version__})"
    )
    if args.json:
        import triton

        with open(args.json, "w") as f:
            json.dump(
                {
                    "gpu": torch.cuda.get_device_name(),
                    "torch": torch.__version__,
                    "triton": triton.__version__,
                    "tolerances": {"max_rel": MAX_REL_TOL, "l2_rel": L2_REL_TOL},
                    "results": [asdict(r) for r in results],
                },
                f,
                indent=1,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
