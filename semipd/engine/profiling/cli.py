"""`semipd profile`: measure a GPU + model over SM splits and write the profile the simulator and the
``profile`` predictor read.

    semipd profile --model /models/Llama-3.1-8B-Instruct --output h100-llama8b.json    # on an H100, ~3 min
    semipd profile --model tiny-llama --load-format dummy --device cpu --quick          # a smoke test

Then ``semipd serve ... --mode semi-pd --predictor profile --profile h100-llama8b.json`` and
``semipd simulate --perf-model h100-llama8b.json``. What is measured, and how, is in
`semipd.engine.profiling.profiler` and `semipd.engine.profiling.sweep`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

QUICK = {"prefill_tokens": (16, 64), "decode_batch": (1, 4), "decode_context": (8, 32), "kv_tokens": (0, 256),
         "interference_splits": 1, "interference_seconds": 0.05, "reps": 1}
"""A grid small enough for a laptop CPU and a tiny model (a smoke test of the whole path)."""


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from semipd.engine.profiling.profiler import ProfileGrid

    d = ProfileGrid()
    e = parser.add_argument_group("model and engine")
    e.add_argument("--model", required=True, help="Hugging Face model directory or preset name (e.g. tiny-llama)")
    e.add_argument("--load-format", default="auto", choices=["auto", "safetensors", "dummy"])
    e.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    e.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    e.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    e.add_argument("--num-kv-blocks", type=int, default=None, help="KV blocks (default: sized from memory)")
    e.add_argument("--block-size", type=int, default=16)
    e.add_argument("--max-model-len", type=int, default=None)
    e.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    e.add_argument("--piecewise-max-tokens", type=int, default=2048,
                   help="largest prefill replayed from piecewise CUDA graphs, as `semipd serve` (0: none)")
    e.add_argument("--seed", type=int, default=0)
    g = parser.add_argument_group("what to measure")
    g.add_argument("--sms", type=_ints, default=None,
                   help="prefill SM counts of the partitions to measure (default: every 16 SMs of the grid)")
    g.add_argument("--prefill-tokens", type=_ints, default=d.prefill_tokens, help="batched tokens per prefill")
    g.add_argument("--decode-batch", type=_ints, default=d.decode_batch, help="decode batch sizes")
    g.add_argument("--decode-context", type=_ints, default=d.decode_context,
                   help="the two contexts per sequence each decode batch is timed at")
    g.add_argument("--kv-tokens", type=_ints, default=d.kv_tokens, help="KV tokens the decode table is written at")
    g.add_argument("--interference-splits", type=int, default=d.interference_splits)
    g.add_argument("--interference-seconds", type=float, default=d.interference_seconds)
    g.add_argument("--reps", type=int, default=d.reps, help="timed repetitions per point")
    g.add_argument("--quick", action="store_true", help="a tiny grid: a smoke test of the whole path")
    o = parser.add_argument_group("output")
    o.add_argument("--output", type=Path, default=Path("profile.json"))
    o.add_argument("--name", default=None, help="profile name (default: model and device)")


def grid_from_args(args: argparse.Namespace) -> Any:
    """The `ProfileGrid` the flags describe (``--quick``: `QUICK`)."""
    from semipd.engine.profiling.profiler import ProfileGrid

    if args.quick:
        return ProfileGrid(sms=args.sms, **QUICK)
    decode_context = args.decode_context
    if len(decode_context) != 2:
        raise ValueError(f"decode_context: give two contexts, got {decode_context}")
    return ProfileGrid(sms=args.sms, prefill_tokens=args.prefill_tokens, decode_batch=args.decode_batch,
                       decode_context=decode_context, kv_tokens=args.kv_tokens,
                       interference_splits=args.interference_splits, interference_seconds=args.interference_seconds,
                       reps=args.reps)


def summary_table(profile: dict[str, Any]) -> str:
    """A short text table: prefill and decode times by SM count, and the slowdowns side by side."""
    pre, dec, inter = profile["prefill"], profile["decode"], profile["interference"]
    batches, kv = dec["batch"], dec["kv_tokens"]
    b, k = min(len(batches) - 1, len(batches) // 2), min(len(kv) - 1, 1)
    lines = [f"{profile['name']}: {profile['meta']['device']}, {profile['total_sms']} SMs, "
             f"{profile['meta']['seconds']:g} s to measure",
             f"{'SMs':>5} " + " ".join(f"{'prefill ' + str(t):>14}" for t in pre["tokens"])
             + f" {'decode b' + str(batches[b]) + ' kv' + str(kv[k]):>22}"]
    for sms in sorted(set(pre["sms"]) | set(dec["sms"])):
        row = [f"{sms:>5}"]
        row += ([f"{v:>11.2f} ms" for v in pre["time_ms"][pre["sms"].index(sms)]] if sms in pre["sms"]
                else [f"{'':>14}"] * len(pre["tokens"]))
        row.append(f"{dec['time_ms'][dec['sms'].index(sms)][b][k]:>19.2f} ms" if sms in dec["sms"] else "")
        lines.append(" ".join(row))
    for (p, d), fp, fd in zip(inter["splits"], inter["prefill_slowdown"], inter["decode_slowdown"], strict=True):
        lines.append(f"side by side P{p}/D{d}: prefill x{fp:.2f}, decode x{fd:.2f}")
    host = profile["host_overhead_ms"]
    lines.append(f"host per step: prefill {host['prefill']:.2f} ms, decode {host['decode']:.2f} ms")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from semipd.engine.engine_config import EngineConfig
    from semipd.engine.profiling.sweep import measure_profile
    from semipd.perf.profile import save_profile

    try:
        grid = grid_from_args(args)
        config = EngineConfig(model=args.model, load_format=args.load_format, dtype=args.dtype, device=args.device,
                              gpu_memory_utilization=args.gpu_memory_utilization, block_size=args.block_size,
                              num_kv_blocks=args.num_kv_blocks, max_num_batched_tokens=max(grid.prefill_tokens),
                              max_num_seqs=max(grid.decode_batch), max_model_len=args.max_model_len,
                              enforce_eager=args.enforce_eager, piecewise_max_tokens=args.piecewise_max_tokens,
                              seed=args.seed)
        name = args.name or f"{Path(args.model.rstrip('/')).name}-{args.device}"
        profile = measure_profile(config, grid, name, progress=lambda text: print(f"semipd profile: {text}",
                                                                                   flush=True))
        save_profile(profile, args.output)
    except (ValueError, FileNotFoundError) as exc:
        print(f"semipd profile: {exc}", file=sys.stderr)
        return 2
    print(summary_table(profile))
    print(f"wrote {args.output}")
    return 0
