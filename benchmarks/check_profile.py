"""Held-back check of a measured profile: the engine's step times at shapes the profile never measured,
against what the profile predicts for them.

    semipd profile --model llama-3.1-8b --load-format dummy --output benchmarks/results/profile_h100.json
    python benchmarks/check_profile.py --profile benchmarks/results/profile_h100.json --model llama-3.1-8b \\
        --load-format dummy
    python benchmarks/check_profile.py --profile /tmp/p.json --model tiny-llama --load-format dummy --device cpu --quick

The engine is built as `semipd profile` builds it (the profiler's `Bench`), with the engine
settings the profile recorded in its meta (dtype, max_model_len, KV blocks, block size, batch
limits, CUDA graphs or not) unless a flag overrides them. Shapes are held back by construction:
by default the geometric midpoints of neighbouring grid values of the profile (batched prefill
tokens, decode batch sizes, the two decode contexts it timed), never a grid value. SM counts are
splits the profile measured (``--sms``, default three spread over its partitions; on a device
without partitions the whole device). Per split P (decode gets the rest, D SMs):

- prefill: one fresh prompt of T tokens on P's prefill side alone, predicted by
  ``prefill_time([(T, T)], P)``;
- decode: a batch of B sequences at context K on P's decode side alone (graph replay as in
  the profile), predicted by ``decode_time(B, B * K, D)``.

Each point is the profiler's own step (`Bench.prefill` / `Bench.decode`), one untimed warm-up and
``--reps`` timed ones; measured is the median wall time of a step, to compare with the
`ProfilePerfModel` times the simulator and the ``profile`` predictor use (table device time plus
the profile's host overhead). The median device time is recorded beside it. Prints a table and
the share of points within 10%; writes ``--output`` (JSON). Exit 0 whatever the errors, 2 for bad
arguments (no such profile, a profile of another model or device, a shape on the grid).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from semipd.engine.common import resolve_device
from semipd.engine.engine_config import EngineConfig
from semipd.engine.profiling.cli import _ints
from semipd.engine.profiling.profiler import Bench, Timing, median_ms, repeat
from semipd.perf import ProfilePerfModel, load_profile
from semipd.perf.registry import normalise_model_name
from semipd.sched import Batch, PrefillChunk

WITHIN = 10.0
"""Error (%) within which a prediction counts as good."""
META_KEYS = ("model", "device", "load_format", "dtype", "max_model_len", "engine", "decode_contexts", "partitions",
             "sm_limited")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", type=Path, required=True, help="the JSON `semipd profile` wrote")
    p.add_argument("--model", required=True, help="the profile's model (directory or preset name)")
    p.add_argument("--load-format", default=None, choices=["auto", "safetensors", "dummy"])
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"])
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--num-kv-blocks", type=int, default=None)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs for decode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sms", type=_ints, default=None, help="prefill SM counts of measured splits to check")
    p.add_argument("--prefill-tokens", type=_ints, default=None, help="held-back batched prefill tokens")
    p.add_argument("--decode-batch", type=_ints, default=None, help="held-back decode batch sizes")
    p.add_argument("--decode-context", type=_ints, default=None, help="held-back decode contexts (tokens/sequence)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per point")
    p.add_argument("--quick", action="store_true", help="one split, one shape per axis, one rep (a smoke test)")
    p.add_argument("--output", type=Path, default=None, help="JSON (default: <profile>_check.json beside it)")
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error(f"--reps must be >= 1, got {args.reps}")
    return args


def midpoints(grid: Sequence[int]) -> list[int]:
    """Rounded geometric midpoints of neighbouring grid values that fall strictly between them."""
    mids = (round(math.sqrt(a * b)) for a, b in zip(grid, grid[1:], strict=False))
    return [m for m, a, b in zip(mids, grid, grid[1:], strict=False) if a < m < b]


def spread(values: Sequence[int]) -> list[int]:
    """Up to three of `values`: near a sixth, the middle and near five sixths of the way."""
    last = len(values) - 1
    return sorted({values[round(last * f)] for f in (1 / 6, 1 / 2, 5 / 6)})


def held_back(name: str, given: tuple[int, ...] | None, grid: Sequence[int], quick: bool) -> list[int]:
    """`given`, or the grid's midpoints; ValueError for a grid value or none at all."""
    values = list(given) if given is not None else midpoints(grid)
    on_grid = [v for v in values if v in grid]
    if on_grid or not values:
        raise ValueError(f"--{name}: need values off the profile's grid {list(grid)}, got {on_grid or 'none'}")
    return values[:1] if quick else values


def check_meta(args: argparse.Namespace, perf: ProfilePerfModel) -> dict[str, Any]:
    """The profile's meta, after checking that it is this model on this device."""
    meta = perf.profile.get("meta", {})
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{args.profile}: meta lacks {missing}; not written by `semipd profile`")
    if normalise_model_name(args.model) != normalise_model_name(meta["model"]):
        raise ValueError(f"{args.profile} is a profile of {meta['model']}, not of {args.model}")
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if name != meta["device"]:
        raise ValueError(f"{args.profile} was measured on {meta['device']}, this device is {name}")
    return meta


def plan(args: argparse.Namespace, perf: ProfilePerfModel, meta: dict[str, Any]) -> dict[str, list[int]]:
    """SM counts and held-back shapes to measure (without partitions: the whole device)."""
    splits = meta["partitions"] if meta["sm_limited"] else [perf.total_sms]
    sms = list(args.sms) if args.sms is not None else spread(splits)
    if not set(sms) <= set(splits):
        raise ValueError(f"--sms: the profile measured the splits {splits}, got {sms}")
    pre, dec = perf.profile["prefill"], perf.profile["decode"]
    return {"sms": [sms[len(sms) // 2]] if args.quick else sms,
            "tokens": held_back("prefill-tokens", args.prefill_tokens, pre["tokens"], args.quick),
            "batch": held_back("decode-batch", args.decode_batch, dec["batch"], args.quick),
            "context": held_back("decode-context", args.decode_context, meta["decode_contexts"], args.quick)}


def engine_config(args: argparse.Namespace, meta: dict[str, Any], shapes: dict[str, list[int]]) -> EngineConfig:
    """The profiled engine's settings (from the profile's meta) unless the flags say otherwise."""
    engine = meta["engine"]
    return EngineConfig(model=args.model, load_format=args.load_format or meta["load_format"],
                        dtype=args.dtype or meta["dtype"], device=args.device, block_size=engine["block_size"],
                        num_kv_blocks=args.num_kv_blocks or engine["kv_blocks"],
                        max_num_batched_tokens=max(engine["max_num_batched_tokens"], *shapes["tokens"]),
                        max_num_seqs=max(engine["max_num_seqs"], *shapes["batch"]),
                        max_model_len=args.max_model_len or meta["max_model_len"],
                        enforce_eager=args.enforce_eager or not engine["cuda_graphs"],
                        piecewise_max_tokens=engine.get("piecewise_max_tokens", 0), seed=args.seed)


def sides(bench: Bench, sms: list[int]) -> list[tuple[int, Any, int, tuple[Any, Any]]]:
    """(prefill SMs, prefill stream, decode SMs, (decode stream, graph key)) per split."""
    total = bench.grid.total_sms
    if not bench.sm_limited:
        return [(total, bench.prefill_sides()[total], total, bench.decode_sides()[total])]
    parts = bench.partitions.partitions()
    return [(p, bench.prefill_sides()[p], parts[p].decode_sms, bench.decode_sides()[parts[p].decode_sms])
            for p in sms]


def time_prefill(bench: Bench, stream: Any, tokens: int, reps: int) -> list[Timing]:
    prompt = bench.prompt(tokens)
    try:
        return repeat(lambda: bench.prefill(Batch(prefills=[PrefillChunk(prompt, 0, tokens, True)]), stream), reps)
    finally:
        bench.free([prompt])


def time_decode(bench: Bench, side: tuple[Any, Any], batch: int, context: int, reps: int) -> list[Timing]:
    stream, key = side
    reqs = bench.decoding(batch, context)
    try:
        return repeat(lambda: bench.decode(Batch(decodes=reqs), stream, key), reps)
    finally:
        bench.free(reqs)


def row(kind: str, sms: int, shape: dict[str, int], timings: list[Timing], predicted_s: float,
        host_s: float) -> dict[str, Any]:
    measured, device = median_ms(timings, device=False), median_ms(timings)
    predicted, predicted_device = 1e3 * predicted_s, 1e3 * (predicted_s - host_s)
    return {"kind": kind, "sms": sms, **shape, "measured_ms": measured, "predicted_ms": predicted,
            "error_pct": 100.0 * (predicted / measured - 1.0), "device_ms": device,
            "predicted_device_ms": predicted_device, "device_error_pct": 100.0 * (predicted_device / device - 1.0)}


def measure(bench: Bench, perf: ProfilePerfModel, shapes: dict[str, list[int]], reps: int) -> list[dict[str, Any]]:
    """Every held-back shape on every split, measured and predicted."""
    too_big = [(b, k) for b in shapes["batch"] for k in shapes["context"] if not bench.fits(b * (k + 1))]
    if too_big:
        raise ValueError(f"decode (batch, context) {too_big} do not fit the KV cache; raise --num-kv-blocks")
    host = {phase: perf.host_overhead_s(phase) for phase in ("prefill", "decode")}
    rows = []
    for p, prefill_stream, d, decode_side in sides(bench, shapes["sms"]):
        for t in shapes["tokens"]:
            rows.append(row("prefill", p, {"tokens": t}, time_prefill(bench, prefill_stream, t, reps),
                            perf.prefill_time([(t, t)], p), host["prefill"]))
        if bench.device.type == "cuda":
            torch.cuda.empty_cache()  # as the profiler does between prefill sides
        for b in shapes["batch"]:
            for k in shapes["context"]:
                rows.append(row("decode", d, {"batch": b, "context": k}, time_decode(bench, decode_side, b, k, reps),
                                perf.decode_time(b, b * k, d), host["decode"]))
    return rows


def summarise(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    errors = [abs(r[key]) for r in rows]
    return {"within_10pct": sum(e <= WITHIN for e in errors) / len(errors),
            "median_abs_error_pct": statistics.median(errors), "worst_abs_error_pct": max(errors)}


def label(r: dict[str, Any]) -> str:
    return f"{r['tokens']} tokens" if r["kind"] == "prefill" else f"b{r['batch']} ctx{r['context']}"


def print_report(report: dict[str, Any]) -> None:
    print(f"\n{report['profile']['name']} on {report['machine']['gpu'] or 'cpu'}: held-back shapes, step times")
    print(f"{'kind':<8} {'SMs':>4}  {'shape':<16} {'measured':>11} {'predicted':>11} {'error':>8}")
    for r in report["rows"]:
        print(f"{r['kind']:<8} {r['sms']:>4}  {label(r):<16} {r['measured_ms']:>8.3f} ms {r['predicted_ms']:>8.3f} ms"
              f" {r['error_pct']:>+7.1f}%")
    for name, s in (("step", report["summary"]), ("device time", report["summary_device"])):
        print(f"{name}: {s['within_10pct']:.0%} of {len(report['rows'])} points within {WITHIN:g}%, "
              f"|error| median {s['median_abs_error_pct']:.1f}%, worst {s['worst_abs_error_pct']:.1f}%")


def machine(device: torch.device) -> dict[str, Any]:
    return {"gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "device": str(device),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        perf = load_profile(args.profile)
        meta = check_meta(args, perf)
        shapes = plan(args, perf, meta)
        reps = 1 if args.quick else args.reps
        bench = Bench(engine_config(args, meta, shapes), tuple(shapes["sms"]))
        try:
            rows = measure(bench, perf, shapes, reps)
        finally:
            bench.partitions.stop()
    except ValueError as exc:
        print(f"check_profile: {exc}", file=sys.stderr)
        return 2
    report = {"machine": machine(bench.device), "profile": {"path": str(args.profile), "name": perf.name,
                                                            "device": meta["device"], "date": meta.get("date")},
              "reps": reps, "shapes": shapes, "rows": rows, "summary": summarise(rows, "error_pct"),
              "summary_device": summarise(rows, "device_error_pct")}
    print_report(report)
    output = args.output or args.profile.with_name(f"{args.profile.stem}_check.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
