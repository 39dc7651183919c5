"""Speed of the attention kernels on a CUDA GPU.

Decode attention: achieved bandwidth (KV bytes read / time) against the device's measured
copy bandwidth (bytes read + written / time of a large device-to-device copy), batch
1/64/256 x context 512..8192, Llama-3.1-8B attention shape (32 q heads, 8 kv heads,
head_dim 128, block 16, bf16). Prefill attention: TFLOP/s of causal prefill and chunked
extend. Each kernel is timed as CUDA-graph replays (no launch overhead). Small sweeps of
tile configs show what the defaults were chosen from.

    python benchmarks/bench_kernels.py [--out benchmarks/results/kernels_h100.json] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from semipd.engine.runtime.kernels.paged_batch import make_paged_batch
from semipd.engine.runtime.kernels.triton_decode_attention import (
    DecodeConfig,
    decode_attention_triton,
    num_decode_splits,
)
from semipd.engine.runtime.kernels.triton_prefill_attention import (
    PrefillConfig,
    auto_prefill_config,
    prefill_attention_triton,
)

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 32, 8, 128, 16


def time_graph(fn: Callable[[], object], inner: int = 10, reps: int = 20) -> float:
    """Seconds per call of `fn`, from replays of a CUDA graph that calls it `inner` times."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(inner):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / inner)
    times.sort()
    return times[len(times) // 2]


def memory_bandwidths() -> dict[str, float]:
    """GB/s of a 2 GiB buffer: device-to-device copy by memcpy and by an elementwise kernel
    (bytes read + written), and a read-only reduction (bytes read)."""
    src = torch.randn(1 << 30, device="cuda").to(torch.bfloat16)
    dst = torch.empty_like(src)
    nbytes = src.numel() * src.element_size()
    memcpy = 2 * nbytes / time_graph(lambda: dst.copy_(src), inner=5, reps=10)
    kernel = 2 * nbytes / time_graph(lambda: torch.mul(src, 1, out=dst), inner=5, reps=10)
    read = nbytes / time_graph(lambda: src.sum(dtype=torch.float32), inner=5, reps=10)
    return {"copy_memcpy_gbs": memcpy / 1e9, "copy_kernel_gbs": kernel / 1e9, "read_sum_gbs": read / 1e9}


def bench_decode(batch: int, context: int, config: DecodeConfig | None = None, splits: int | None = None) -> dict:
    b = make_paged_batch([context] * batch, [0] * batch, HEADS, KV_HEADS, HEAD_DIM, BLOCK, torch.bfloat16, "cuda")
    q = torch.randn(batch, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    args = (q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, context, HEAD_DIM**-0.5)
    seconds = time_graph(lambda: decode_attention_triton(*args, num_splits=splits, config=config))
    cfg = config or DecodeConfig()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    used = splits or num_decode_splits(batch, KV_HEADS, context, sms, cfg)
    return {
        "batch": batch,
        "context": context,
        "splits": used,
        "time_us": seconds * 1e6,
        "kv_bytes": b.kv_bytes(),
        "bandwidth_gbs": b.kv_bytes() / seconds / 1e9,
        "l2_resident": b.kv_bytes() < 40e6,
    }


def bench_prefill(seq_lens: list[int], q_lens: list[int], head_dim: int, config: PrefillConfig | None = None) -> dict:
    heads, kv_heads = (HEADS, KV_HEADS) if head_dim == 128 else (16, 4)
    b = make_paged_batch(seq_lens, q_lens, heads, kv_heads, head_dim, BLOCK, torch.bfloat16, "cuda")
    scale = head_dim**-0.5
    args = (b.q, b.k_cache, b.v_cache, b.block_tables, b.seq_lens, b.cu_seqlens_q, b.max_seqlen_q, scale)
    seconds = time_graph(lambda: prefill_attention_triton(*args, config=config), inner=3, reps=10)
    # Visible (query, key) pairs under the causal rule; 2 matmuls of 2 flops each per pair and dim.
    pairs = sum(q * (s - q) + q * (q + 1) // 2 for s, q in zip(seq_lens, q_lens, strict=True))
    flops = 4 * pairs * heads * head_dim
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    cfg = config or auto_prefill_config(head_dim, heads, len(seq_lens), max(q_lens), sms)
    return {
        "seq_lens": seq_lens,
        "new_tokens": q_lens,
        "heads": [heads, kv_heads],
        "head_dim": head_dim,
        "config": [cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages],
        "time_ms": seconds * 1e3,
        "tflops": flops / seconds / 1e12,
    }


def _log(msg: str) -> None:
    print(msg, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/kernels_h100.json")
    parser.add_argument("--quick", action="store_true", help="skip the config sweeps")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA device", file=sys.stderr)
        return 2
    import triton

    t_start = time.perf_counter()
    bandwidths = memory_bandwidths()
    copy_bw = 1e9 * max(bandwidths["copy_memcpy_gbs"], bandwidths["copy_kernel_gbs"])
    _log(f"memory bandwidths (GB/s): {bandwidths}; copy bandwidth used: {copy_bw / 1e9:.0f} GB/s")
    result: dict = {
        "gpu": torch.cuda.get_device_name(),
        "sms": torch.cuda.get_device_properties(0).multi_processor_count,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": datetime.date.today().isoformat(),
        "shape": {"heads": HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM, "block_size": BLOCK, "dtype": "bf16"},
        "copy_bandwidth_gbs": copy_bw / 1e9,
        "copy_bandwidth_note": "the faster of memcpy and an elementwise copy kernel, bytes read + written",
        "bandwidths": bandwidths,
        "decode_config": DecodeConfig().__dict__,
        "decode": [],
        "prefill": [],
    }
    for batch in (1, 64, 256):
        for context in (512, 1024, 2048, 4096, 8192):
            row = bench_decode(batch, context)
            row["pct_of_copy_bandwidth"] = 100 * row["bandwidth_gbs"] * 1e9 / copy_bw
            result["decode"].append(row)
            _log(
                f"decode B{batch:<4d} ctx {context:<5d} splits {row['splits']:<3d} {row['time_us']:8.1f} us "
                f"{row['bandwidth_gbs']:7.0f} GB/s {row['pct_of_copy_bandwidth']:5.1f}% of copy"
            )
    prefill_shapes = [([1024], [1024]), ([4096], [4096]), ([8192], [8192]), ([2048] * 4, [2048] * 4),
                      ([8192], [512]), ([16384], [2048])]  # fmt: skip
    for head_dim in (128, 64):
        for seq_lens, q_lens in prefill_shapes:
            row = bench_prefill(seq_lens, q_lens, head_dim)
            result["prefill"].append(row)
            _log(
                f"prefill D{head_dim} seqs {seq_lens} new {q_lens}: {row['time_ms']:.3f} ms {row['tflops']:.0f} TFLOP/s"
            )
    if not args.quick:
        sweep_decode = []
        for block_n, warps, stages in [(64, 4, 2), (128, 4, 2), (32, 4, 2), (64, 4, 3), (128, 8, 2), (64, 2, 2)]:
            cfg = DecodeConfig(block_n=block_n, num_warps=warps, num_stages=stages)
            for batch, context in [(64, 1024), (256, 4096), (1, 8192), (8, 4096)]:
                row = bench_decode(batch, context, cfg)
                row |= {
                    "config": [block_n, warps, stages],
                    "pct_of_copy_bandwidth": 100 * row["bandwidth_gbs"] * 1e9 / copy_bw,
                }
                sweep_decode.append(row)
                _log(f"sweep decode {row['config']} B{batch} ctx {context}: {row['pct_of_copy_bandwidth']:.1f}%")
        for splits in (1, 2, 4, 8, 16, 32):
            row = bench_decode(1, 8192, splits=splits) | {"config": "default"}
            row["pct_of_copy_bandwidth"] = 100 * row["bandwidth_gbs"] * 1e9 / copy_bw
            sweep_decode.append(row)
            _log(f"sweep decode splits {splits} B1 ctx 8192: {row['time_us']:.1f} us")
        result["sweep_decode"] = sweep_decode
        sweep_prefill = []
        prefill_sweep = {
            128: [(128, 32, 4, 3), (128, 32, 4, 4), (128, 32, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2),
                  (128, 128, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3), (64, 64, 4, 4)],
            64: [(128, 64, 8, 3), (128, 64, 4, 3), (128, 32, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3),
                 (64, 64, 4, 4), (64, 32, 4, 3)],
        }  # fmt: skip
        for head_dim, configs in prefill_sweep.items():
            for bm, bn, warps, stages in configs:
                cfg = PrefillConfig(block_m=bm, block_n=bn, num_warps=warps, num_stages=stages)
                for seq_lens, q_lens in (([8192], [8192]), ([2048] * 4, [2048] * 4), ([8192], [512])):
                    try:
                        row = bench_prefill(seq_lens, q_lens, head_dim, cfg)
                    except Exception as e:  # e.g. out of shared memory for this tile: record and go on
                        row = {"head_dim": head_dim, "config": [bm, bn, warps, stages], "error": str(e)[:200]}
                    sweep_prefill.append(row)
                    _log(
                        f"sweep prefill D{head_dim} {row['config']} {seq_lens[:1]}x{len(seq_lens)} new {q_lens[0]}: "
                        f"{row.get('tflops', float('nan')):.0f} TFLOP/s"
                    )
        result["sweep_prefill"] = sweep_prefill
    result["bench_seconds"] = time.perf_counter() - t_start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    _log(f"wrote {args.out} in {result['bench_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
