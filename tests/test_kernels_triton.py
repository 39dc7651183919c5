"""Triton kernels against their torch references under the Triton interpreter (CPU).

Interpreter mode is fixed when triton is first imported and then holds for the whole
process, so the cases run together in one child process started with
``TRITON_INTERPRET=1`` (running this file as a script); each case is reported as its own
test here, and the pytest process itself never runs a kernel.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable

import pytest
import torch


def _interpreter_blocker() -> str | None:
    """Why the Triton interpreter cannot run here, or None. Triton < 3.7's interpreter calls ``int()``
    on one-element arrays, which numpy >= 2.4 refuses (the compiled kernels are unaffected)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    from importlib.metadata import version

    def major_minor(name: str) -> tuple[int, int]:
        return tuple(int(p) for p in version(name).split(".")[:2])  # type: ignore[return-value]

    if major_minor("triton") < (3, 7) and major_minor("numpy") >= (2, 4):
        return (f"the interpreter of triton {version('triton')} fails with numpy {version('numpy')}: "
                "install triton>=3.7 or numpy<2.4 to run these cases")
    return None


_BLOCKER = _interpreter_blocker()
pytestmark = pytest.mark.skipif(_BLOCKER is not None, reason=_BLOCKER or "")

CASES: dict[str, Callable[[], None]] = {}


def case(fn: Callable[[], None]) -> Callable[[], None]:
    CASES[fn.__name__] = fn
    return fn


def _close(out: torch.Tensor, ref: torch.Tensor, reduction: int = 1) -> None:
    """`out` matches `ref` within rounding. Summing `reduction` products in another order moves the
    result by a random walk of roundings, so the tolerance grows as its square root (one product's
    tolerance at ``reduction=1``; a K=512 fp32 dot product may differ by ~1.2e-5 between orders)."""
    tol = (1e-5 if out.dtype == torch.float32 else 3e-3) * max(1.0, reduction ** 0.5)
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol)


@case
def rms_norm() -> None:
    from semipd.engine.runtime.kernels import rms_norm_torch
    from semipd.engine.runtime.kernels.triton_norm import rms_norm_triton

    for dtype in (torch.float32, torch.float16):
        for shape in ((1, 40), (5, 128), (3, 4, 16)):
            x = torch.randn(shape).to(dtype)
            w = torch.randn(shape[-1]).to(dtype)
            _close(rms_norm_triton(x, w, 1e-6), rms_norm_torch(x, w, 1e-6))
            r = torch.randn(shape).to(dtype)
            (y, s), (ry, rs) = rms_norm_triton(x, w, 1e-6, r), rms_norm_torch(x, w, 1e-6, r)
            _close(y, ry)
            _close(s, rs)
    wide = torch.randn(4, 96)
    x = wide[:, 8:72]  # rows strided, as a slice of a fused projection
    _close(rms_norm_triton(x, torch.ones(64), 1e-5), rms_norm_torch(x, torch.ones(64), 1e-5))


@case
def silu_and_mul() -> None:
    from semipd.engine.runtime.kernels import silu_and_mul_torch
    from semipd.engine.runtime.kernels.triton_activation import silu_and_mul_triton

    for x in (torch.randn(5, 26).half(), torch.randn(1, 128), torch.randn(2, 3, 34), torch.randn(3, 2 * 1500)):
        _close(silu_and_mul_triton(x), silu_and_mul_torch(x))


@case
def rope_in_place_on_fused_views() -> None:
    from semipd.engine.runtime.kernels import apply_rope_torch, build_rope_cache
    from semipd.engine.runtime.kernels.triton_rope import apply_rope_triton

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}  # fmt: skip
    for dtype, head_dim, (hq, hkv) in (
        (torch.float32, 32, (4, 2)),
        (torch.float16, 64, (6, 1)),
        (torch.float32, 16, (3, 3)),
    ):
        cache = build_rope_cache(head_dim, 100, 10000.0, scaling)
        tokens = 7
        qkv = torch.randn(tokens, (hq + 2 * hkv) * head_dim).to(dtype)
        q = qkv[:, : hq * head_dim].view(tokens, hq, head_dim)
        k = qkv[:, hq * head_dim : (hq + hkv) * head_dim].view(tokens, hkv, head_dim)
        positions = torch.tensor([0, 1, 99, 50, 3, 3, 98])
        rq, rk = apply_rope_torch(q.clone(), k.clone(), positions, cache)
        untouched = qkv[:, (hq + hkv) * head_dim :].clone()
        apply_rope_triton(q, k, positions, cache)
        _close(q, rq)
        _close(k, rk)
        assert torch.equal(qkv[:, (hq + hkv) * head_dim :], untouched)


@case
def store_kvcache() -> None:
    from semipd.engine.runtime.kernels import store_kvcache_torch
    from semipd.engine.runtime.kernels.triton_kvcache import store_kvcache_triton

    for slots in ([5, -1, 0, 15, 9], [-1, -1, -1, -1, -1], [31, 30, 2, 1, 16]):
        qkv = torch.randn(5, 4 * 24).half()
        k = qkv[:, 24:48].view(5, 2, 12)
        v = qkv[:, 48:72].view(5, 2, 12)
        caches = [torch.randn(4, 8, 2, 12).half() for _ in range(2)]
        refs = [c.clone() for c in caches]
        slot_mapping = torch.tensor(slots)
        store_kvcache_triton(k, v, *caches, slot_mapping)
        store_kvcache_torch(k, v, *refs, slot_mapping)
        assert torch.equal(caches[0], refs[0]) and torch.equal(caches[1], refs[1])


def _prefill_check(seq_lens, q_lens, heads, head_dim, block, dtype=torch.float32, config=None, seed=0) -> None:
    from semipd.engine.runtime.attention.torch_ref import paged_prefill_attention_torch
    from semipd.engine.runtime.kernels.paged_batch import make_paged_batch
    from semipd.engine.runtime.kernels.triton_prefill_attention import prefill_attention_triton

    b = make_paged_batch(seq_lens, q_lens, heads[0], heads[1], head_dim, block, dtype, seed=seed)
    flat_k, flat_v = b.k_cache.view(-1, heads[1], head_dim), b.v_cache.view(-1, heads[1], head_dim)
    flat_k[b.slot_mapping], flat_v[b.slot_mapping] = b.k, b.v
    args = (b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q)
    out = prefill_attention_triton(*args, b.max_seqlen_q, head_dim**-0.5, config=config)
    _close(out, paged_prefill_attention_torch(*args, head_dim**-0.5))


@case
def prefill_plain_odd_lengths_gqa1() -> None:
    _prefill_check([5, 9, 1, 23], [5, 9, 1, 23], (2, 2), 16, 4)


@case
def prefill_chunked_with_prefix_gqa2() -> None:
    _prefill_check([13, 40, 7, 33], [5, 3, 7, 1], (4, 2), 32, 16, torch.float16)


@case
def prefill_block_boundaries_gqa4() -> None:
    _prefill_check([16, 17, 15, 32, 1], [16, 1, 15, 16, 1], (8, 2), 16, 16)


@case
def prefill_many_tiles_uneven_head_dim() -> None:
    from semipd.engine.runtime.kernels.triton_prefill_attention import PrefillConfig

    # 16-row tiles: several query tiles per sequence and long unmasked phases; head_dim 24 pads to 32.
    _prefill_check([70, 45], [50, 45], (4, 1), 24, 8, config=PrefillConfig(block_m=16, block_n=16, num_warps=4))


def _decode_check(seq_lens, heads, head_dim, block, splits, dtype=torch.float32, bound_pad=0) -> None:
    from semipd.engine.runtime.attention.torch_ref import paged_decode_attention_torch
    from semipd.engine.runtime.kernels.paged_batch import make_paged_batch
    from semipd.engine.runtime.kernels.triton_decode_attention import decode_attention_triton

    b = make_paged_batch(seq_lens, [0] * len(seq_lens), heads[0], heads[1], head_dim, block, dtype, seed=5)
    q = torch.randn(len(seq_lens), heads[0], head_dim).to(dtype)
    bound = max(seq_lens) + bound_pad
    args = (q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, bound, head_dim**-0.5)
    out = decode_attention_triton(*args, num_splits=splits)
    ref = paged_decode_attention_torch(*args)
    _close(out, ref)
    assert torch.equal(out[torch.tensor(seq_lens) == 0], torch.zeros_like(out[torch.tensor(seq_lens) == 0]))


@case
def decode_one_split_gqa1() -> None:
    _decode_check([1, 17, 40, 0], (4, 4), 16, 8, 1)


@case
def decode_several_splits_gqa2() -> None:
    for splits in (2, 3, 8):
        _decode_check([100, 3, 0, 64, 16], (8, 4), 32, 16, splits, torch.float16)


@case
def decode_auto_splits_gqa4_loose_bound() -> None:
    _decode_check([300, 1, 129, 128], (8, 2), 16, 16, None, bound_pad=200)


@case
def backends_agree_end_to_end() -> None:
    from semipd.engine.runtime.attention import get_backend
    from semipd.engine.runtime.kernels.paged_batch import make_paged_batch

    for seq_lens, q_lens in (([20, 9, 33], [20, 1, 4]), ([40, 1, 17], [1, 1, 1])):
        batches = [make_paged_batch(seq_lens, q_lens, 4, 2, 16, 8, seed=7) for _ in range(2)]
        for b in batches:
            b.slot_mapping[0] = -1  # a padding row: its K/V must not be written
        outs = []
        for name, b in zip(("triton", "torch"), batches, strict=True):
            outs.append(get_backend(name).forward(b.q, b.k, b.v, b.k_cache, b.v_cache, b.metadata(), 0.25))
        assert torch.equal(batches[0].k_cache, batches[1].k_cache)
        assert torch.equal(batches[0].v_cache, batches[1].v_cache)
        _close(outs[0], outs[1])


@case
def sampling_matches_reference() -> None:
    from semipd.engine.runtime.kernels.triton_sampling import sample_tokens_triton
    from semipd.engine.runtime.sampler import sample_tokens_torch

    for dtype, (rows, vocab) in ((torch.float32, (6, 50)), (torch.bfloat16, (5, 9000)), (torch.float32, (3, 4096))):
        logits = (torch.randn(rows, vocab) * 3).to(dtype)
        temps = torch.tensor([0.0, 0.7, 1.3, 1.0, 0.0, 2.0])[:rows]
        seeds = torch.tensor([1, -5, 2**62 + 7, 123, 9, -(2**63)])[:rows]
        steps = torch.tensor([0, 3, 1000, 2**33 + 1, 2, 7])[:rows]
        assert torch.equal(sample_tokens_triton(logits, temps, seeds, steps),
                           sample_tokens_torch(logits, temps, seeds, steps))
    tied = torch.zeros(2, 9000)
    tied[:, [5, 4100, 8000]] = 1.0  # equal maxima in three chunks: the first wins, as torch.argmax
    zeros = torch.zeros(2, dtype=torch.int64)
    assert sample_tokens_triton(tied, torch.zeros(2), zeros, zeros).tolist() == [5, 5]


@case
def sampling_tiny_temperature_is_greedy() -> None:
    from semipd.engine.runtime.kernels.triton_sampling import sample_tokens_triton

    logits = torch.randn(6, 5000) * 30  # logits / 1e-40 overflow to +inf: ties would pick the first positive one
    seeds, steps = torch.arange(6), torch.zeros(6, dtype=torch.int64)
    for temperature in (1e-40, 1e-30, 1e-6):
        temps = torch.full((6,), temperature)
        assert torch.equal(sample_tokens_triton(logits, temps, seeds, steps), logits.argmax(-1)), temperature


@case
def rope_and_store_matches_the_unfused_ops() -> None:
    from semipd.engine.runtime.kernels import apply_rope_torch, build_rope_cache, store_kvcache_torch
    from semipd.engine.runtime.kernels.triton_rope_store import rope_and_store_kvcache_triton

    for dtype, head_dim, (hq, hkv) in ((torch.float32, 32, (4, 2)), (torch.float16, 24, (6, 3))):
        cache = build_rope_cache(head_dim, 64, 10000.0)
        tokens = 6
        qkv = torch.randn(tokens, (hq + 2 * hkv) * head_dim).to(dtype)
        q, k, v = (t.view(tokens, -1, head_dim) for t in qkv.split([hq * head_dim, hkv * head_dim, hkv * head_dim], 1))
        positions = torch.tensor([0, 5, 63, 2, 2, 40])
        slots = torch.tensor([3, -1, 17, 0, 30, 9])
        caches = [torch.randn(4, 8, hkv, head_dim).to(dtype) for _ in range(2)]
        refs = [c.clone() for c in caches]
        rq, rk = apply_rope_torch(q.clone(), k.clone(), positions, cache)
        store_kvcache_torch(rk, v, *refs, slots)
        rope_and_store_kvcache_triton(q, k, v, positions, cache, *caches, slots)
        _close(q, rq)
        _close(caches[0], refs[0])
        assert torch.equal(caches[1], refs[1])


@case
def mixed_batch_splits_prefill_and_decode_kernels() -> None:
    from semipd.engine.runtime.attention import get_backend
    from semipd.engine.runtime.kernels.paged_batch import make_paged_batch

    for seq_lens, q_lens in (([20, 9, 33, 50, 7], [20, 4, 1, 1, 1]), ([40, 17], [3, 1])):
        b = make_paged_batch(seq_lens, q_lens, 8, 2, 16, 8, seed=3)
        meta = b.metadata()
        meta.num_decodes = sum(1 for q in q_lens[1:] if q == 1)
        outs = [get_backend(name).forward(b.q, b.k, b.v, b.k_cache, b.v_cache, meta, 0.25)
                for name in ("triton", "torch")]
        _close(outs[0], outs[1])


@case
def skinny_matmul_tiles() -> None:
    from semipd.engine.runtime.kernels.triton_gemv import CANDIDATES, GemvConfig, gemv_triton

    for rows, n, k in ((1, 100, 300), (3, 64, 512), (16, 33, 257)):
        x, w, b = torch.randn(rows, k), torch.randn(n, k), torch.randn(n)
        for cfg in (c for c in CANDIDATES if rows == 1 or c.dot):
            _close(gemv_triton(x, w, b, cfg), x @ w.t() + b, reduction=k)
        out = torch.empty(rows, n)
        assert gemv_triton(x, w, None, GemvConfig(block_n=16, block_k=128), out=out) is out
        _close(out, x @ w.t(), reduction=k)
    x, w = torch.randn(2, 64).half(), torch.randn(48, 64).half()
    _close(gemv_triton(x, w), (x.float() @ w.float().t()).half(), reduction=64)
    try:
        gemv_triton(torch.randn(2, 8), torch.randn(4, 8), config=GemvConfig(dot=False))
    except ValueError:
        return
    raise AssertionError("two rows were accepted without dot")


@case
def split_policy_and_configs() -> None:
    from semipd.engine.runtime.kernels.triton_decode_attention import DecodeConfig, num_decode_splits
    from semipd.engine.runtime.kernels.triton_gemv import GemvConfig
    from semipd.engine.runtime.kernels.triton_prefill_attention import PrefillConfig, default_prefill_config

    assert num_decode_splits(1, 8, 8192, 132) == 32
    assert num_decode_splits(64, 8, 1024, 132) == 1
    assert num_decode_splits(1, 8, 100, 132) == 1
    assert num_decode_splits(4, 8, 4096, 132) == 9
    cfg = DecodeConfig(max_splits=4)
    assert all(num_decode_splits(b, 8, 32768, 132, cfg) <= 4 for b in (1, 2, 3))
    assert default_prefill_config(64, num_programs=32).block_m == 64
    assert default_prefill_config(64, num_programs=4096).block_m == 128
    assert default_prefill_config(128, num_programs=4096).block_m == 64
    for bad in ({"block_n": 48}, {"num_warps": 3}, {"max_splits": 0}):
        try:
            DecodeConfig(**bad)
        except ValueError:
            continue
        raise AssertionError(f"DecodeConfig({bad}) was accepted")
    for bad in ({"block_m": 8}, {"num_stages": 0}):
        try:
            PrefillConfig(**bad)
        except ValueError:
            continue
        raise AssertionError(f"PrefillConfig({bad}) was accepted")
    for bad in ({"block_k": 100}, {"num_warps": 32}):
        try:
            GemvConfig(**bad)
        except ValueError as exc:
            assert next(iter(bad)) in str(exc)  # the error names the field
            continue
        raise AssertionError(f"GemvConfig({bad}) was accepted")


@pytest.fixture(scope="module")
def interpreted() -> dict[str, str]:
    env = os.environ | {"TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        pytest.fail(f"interpreter run failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


@pytest.mark.parametrize("name", sorted(CASES))
def test_triton_kernel_matches_reference(name: str, interpreted: dict[str, str]) -> None:
    assert interpreted.get(name) == "ok", interpreted.get(name, "not run")


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("run with TRITON_INTERPRET=1")
    torch.manual_seed(0)
    results = {}
    for name, fn in CASES.items():
        try:
            fn()
            results[name] = "ok"
        except Exception:
            results[name] = traceback.format_exc()
    print(json.dumps(results))
