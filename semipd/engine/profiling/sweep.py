"""`measure_profile`: sweep a `Bench` over its SM counts and assemble a profile (`semipd.perf.profile`).

See `semipd.engine.profiling.profiler` for how each step is run and timed. The sweep: prefill iterations
by batched tokens on every prefill side, decode steps by batch at two contexts on every decode
side, the attention cost of earlier context on the whole device, the two phases side by side on
a few splits, and the median host share of the steps.
"""

from __future__ import annotations

import datetime
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import semipd
from semipd.engine.engine_config import EngineConfig
from semipd.engine.profiling.profiler import Bench, ProfileGrid, median_ms, repeat, side_by_side
from semipd.perf.profile import FORMAT
from semipd.sched import Batch, PrefillChunk

INTERFERENCE_LOAD = (2048, 64, 1024)
"""(prefill tokens, decode batch, decode context) of the side-by-side runs (the measured facts' load),
shrunk to what the model and the KV cache allow."""


def measure_profile(config: EngineConfig, grid: ProfileGrid, name: str,
                    progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Load `config`'s model as the engine does, measure it over `grid` and return the profile."""
    started = time.perf_counter()
    progress("loading the model and building the partitions")
    bench = Bench(config, grid.sms)
    try:
        return _measure(bench, config, grid, name, progress, started)
    finally:
        bench.partitions.stop()


def _measure(bench: Bench, config: EngineConfig, grid: ProfileGrid, name: str, progress: Callable[[str], None],
             started: float) -> dict[str, Any]:
    longest = max(grid.prefill_tokens[-1], grid.decode_context[1])
    if longest >= bench.max_model_len:
        raise ValueError(f"prefill_tokens and decode_context must stay below max_model_len {bench.max_model_len}, "
                         f"got {longest}")
    host: dict[str, list[float]] = {"prefill": [], "decode": []}
    prefill_sms = sorted(bench.prefill_sides())
    progress(f"prefill: {len(prefill_sms)} SM counts x {len(grid.prefill_tokens)} token counts")
    prefill_ms = []
    for _, stream in sorted(bench.prefill_sides().items()):
        prefill_ms.append([_prefill_point(bench, stream, tokens, grid.reps, host) for tokens in grid.prefill_tokens])
        if bench.device.type == "cuda":
            torch.cuda.empty_cache()  # the caching allocator keeps each stream's blocks: give this one's back
    decode_sms = sorted(bench.decode_sides())
    progress(f"decode: {len(decode_sms)} SM counts x {len(grid.decode_batch)} batches x 2 contexts")
    decode_ms = [[_decode_row(bench, side, batch, grid, host) for batch in grid.decode_batch]
                 for _, side in sorted(bench.decode_sides().items())]
    progress("attention cost of earlier context")
    pair_ms = _attention_pair_ms(bench, grid.reps, max(16, min(256, grid.prefill_tokens[-1] // 8)))
    splits = _interference_splits(bench, grid)
    progress(f"interference: {len(splits)} split(s) x {3 * grid.interference_seconds:g} s")
    tokens, batch, context = _interference_load(bench, grid)
    side = [side_by_side(bench, p, grid, tokens, batch, context) for p in splits]
    profile = {
        "format": FORMAT,
        "name": name,
        "total_sms": bench.grid.total_sms,
        **_memory(bench),
        "prefill": {"sms": prefill_sms, "tokens": list(grid.prefill_tokens), "time_ms": prefill_ms,
                    "attention_pair_ms": pair_ms},
        "decode": {"sms": decode_sms, "batch": list(grid.decode_batch), "kv_tokens": list(grid.kv_tokens),
                   "time_ms": decode_ms},
        "interference": {"splits": [[s["prefill_sms"], s["decode_sms"]] for s in side],
                         "prefill_slowdown": [s["prefill_slowdown"] for s in side],
                         "decode_slowdown": [s["decode_slowdown"] for s in side]},
        "host_overhead_ms": {phase: 1e3 * statistics.median(v) if v else 0.0 for phase, v in host.items()},
        "meta": _meta(bench, config, grid, (tokens, batch, context), time.perf_counter() - started),
    }
    return profile


def _prefill_point(bench: Bench, stream: Any, tokens: int, reps: int, host: dict[str, list[float]]) -> float:
    prompt = bench.prompt(tokens)
    try:
        timings = repeat(lambda: bench.prefill(Batch(prefills=[PrefillChunk(prompt, 0, tokens, True)]), stream), reps)
    finally:
        bench.free([prompt])
    host["prefill"].extend(t.host_s for t in timings)
    return median_ms(timings)


def _decode_row(bench: Bench, side: tuple[Any, Any], batch: int, grid: ProfileGrid,
                host: dict[str, list[float]]) -> list[float]:
    """Decode step times (ms) at the table's KV-token points, from the line through two measured contexts."""
    stream, key = side
    low, high = _contexts(bench, batch, grid)
    points = []
    for context in (low, high):
        reqs = bench.decoding(batch, context)
        try:
            timings = repeat(lambda reqs=reqs: bench.decode(Batch(decodes=reqs), stream, key), grid.reps)
        finally:
            bench.free(reqs)
        host["decode"].extend(t.host_s for t in timings)
        points.append((batch * context, median_ms(timings)))
    (k0, t0), (k1, t1) = points
    slope = max(0.0, (t1 - t0) / (k1 - k0))
    return [max(1e-3, t0 + slope * (k - k0)) for k in grid.kv_tokens]


def _contexts(bench: Bench, batch: int, grid: ProfileGrid) -> tuple[int, int]:
    """The two contexts to time `batch` at: the grid's, the larger shrunk to fit the KV cache."""
    low, high = grid.decode_context
    while high > 2 and not bench.fits(batch * (high + 1)):
        high //= 2
    low = min(low, max(1, high // 4))
    if high <= low or not bench.fits(batch * (high + 1)):
        raise ValueError(f"decode_batch {batch} does not fit the KV cache at two contexts; raise num_kv_blocks "
                         f"or lower the batch")
    return low, high


def _attention_pair_ms(bench: Bench, reps: int, new: int) -> float:
    """ms per (new token, earlier token) pair on the whole device: a chunk of `new` tokens after 8x as
    much context, against the same chunk as a fresh prompt."""
    context = 8 * new
    stream = bench.prefill_sides()[bench.grid.total_sms]
    fresh = bench.prompt(new, "profile-fresh")
    later = bench.prompt(context + new, "profile-context")
    try:
        bench.prefill(Batch(prefills=[PrefillChunk(later, 0, context, False)]), stream)  # writes the context's KV
        alone = median_ms(repeat(lambda: bench.prefill(Batch(prefills=[PrefillChunk(fresh, 0, new, True)]), stream),
                                 reps))
        after = median_ms(repeat(lambda: bench.prefill(Batch(prefills=[PrefillChunk(later, context, new, True)]),
                                                       stream), reps))
    finally:
        bench.free([fresh, later])
    return max(0.0, (after - alone) / (new * context))


def _interference_splits(bench: Bench, grid: ProfileGrid) -> list[int]:
    """Prefill SM counts of the splits to measure side by side: `interference_splits` of them, spread out."""
    keys = sorted(bench.partitions.partitions())
    if len(keys) <= grid.interference_splits:
        return keys
    step = (len(keys) - 1) / (grid.interference_splits - 1) if grid.interference_splits > 1 else 0
    return sorted({keys[round(i * step)] for i in range(grid.interference_splits)})


def _interference_load(bench: Bench, grid: ProfileGrid) -> tuple[int, int, int]:
    tokens, batch, context = INTERFERENCE_LOAD
    tokens = min(tokens, grid.prefill_tokens[-1])
    batch = min(batch, grid.decode_batch[-1])
    context = min(context, grid.decode_context[1])
    while context > 2 and not bench.fits(batch * (context + 1) + tokens + 1):
        context //= 2
    return tokens, batch, context


def _memory(bench: Bench) -> dict[str, int]:
    """The profile's memory fields, so that ``kv_capacity_tokens(gpu_memory_utilization)`` is this engine's pool."""
    if bench.device.type == "cuda":
        memory = torch.cuda.get_device_properties(bench.device).total_memory
    else:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    weights = sum(p.numel() * p.element_size() for p in bench.model.parameters())
    reserve = memory * bench.config.gpu_memory_utilization - weights - bench.kv_cache.num_bytes
    return {"memory_bytes": int(memory), "weight_bytes": int(weights), "activation_reserve_bytes": max(0, int(reserve)),
            "kv_bytes_per_token": int(bench.kv_cache.spec.bytes_per_token)}


def _meta(bench: Bench, config: EngineConfig, grid: ProfileGrid, load: tuple[int, int, int],
          seconds: float) -> dict[str, Any]:
    cuda = bench.device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(bench.device) if cuda else "cpu",
        "device_type": bench.device.type,
        "backend": bench.partitions.backend,
        "sm_limited": bench.sm_limited,
        "partitions": sorted(bench.partitions.partitions()),
        "model": config.model,
        "load_format": config.load_format,
        "dtype": str(bench.model.dtype).removeprefix("torch."),
        "max_model_len": bench.max_model_len,
        "engine": {"max_num_batched_tokens": config.max_num_batched_tokens, "max_num_seqs": config.max_num_seqs,
                   "block_size": config.block_size, "kv_blocks": bench.kv_cache.num_blocks,
                   "cuda_graphs": cuda and not config.enforce_eager,
                   "piecewise_max_tokens": config.piecewise_max_tokens if cuda and not config.enforce_eager else 0},
        "decode_contexts": list(grid.decode_context),
        "interference_load": {"prefill_tokens": load[0], "decode_batch": load[1], "decode_context": load[2]},
        "reps": grid.reps,
        "torch": torch.__version__,
        "semipd": semipd.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "times": "prefill and decode tables: device time per step; host_overhead_ms: the rest of a step's wall time",
    }

