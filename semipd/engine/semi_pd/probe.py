"""Timing probes over a running (idle) `SemiPDEngine`: its SM-scaling table and its isolation.

Both use the engine's own execution path - the prefill worker's `ModelRunner` with its
layer-launch throttle, and the decode worker's `run_step` (a CUDA-graph replay of the
partition's graph set) - on the streams of
its pre-created partitions, with synthetic requests whose KV blocks come from the engine's
allocator (so the workers never see them). The engine must have no requests while a probe
runs. Times are wall-clock seconds per call; every call ends with the host reading the
sampled tokens, so it covers the whole step.

- `sm_scaling_table`: for each partition, a prefill iteration of N tokens on the prefill
  side and a decode step (batch B, context C) on the decode side, one at a time.
- `interference`: the decode step alone, then with prefill iterations running at the same
  time on the other partition (two threads, as in serving), then alone again.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch

from semipd.engine.runtime.warm_up import synthetic_request
from semipd.engine.semi_pd.engine import SemiPDEngine
from semipd.engine.semi_pd.workers import throttled_prefill
from semipd.sched import Batch, PrefillChunk, Request


@contextmanager
def synthetic_batches(engine: SemiPDEngine, prefill_tokens: int, decode_batch: int, context: int):
    """(prefill batch of one `prefill_tokens`-token prompt, decode batch of `decode_batch`
    requests at `context` tokens); their blocks are freed on exit."""
    if engine.has_unfinished():
        raise RuntimeError("the engine must be idle while a probe runs")
    made: list[Request] = []
    try:
        vocab = engine.model_config.vocab_size
        made.append(synthetic_request(engine.allocator, "probe-prefill", prefill_tokens, vocab))
        prefill = Batch(prefills=[PrefillChunk(made[0], 0, prefill_tokens, True)])
        decodes = []
        for i in range(decode_batch):
            req = synthetic_request(engine.allocator, f"probe-decode-{i}", context - 1, vocab)
            req.append_token(1)  # one token generated: the step decodes position context - 1
            decodes.append(req)
            made.append(req)
        yield prefill, Batch(decodes=decodes)
    finally:
        for req in made:
            engine.allocator.free(req)


def _prefill(engine: SemiPDEngine, batch: Batch, stream: Any) -> list[int]:
    """One prefill iteration as the prefill worker runs it (throttled per layer), on `stream`."""
    worker = engine.prefill_worker
    return throttled_prefill(worker.runner, worker.throttle, batch, stream)


def _on(stream: Any) -> contextlib.AbstractContextManager:
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def _timed(fn: Callable[[], Any], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def sm_scaling_table(engine: SemiPDEngine, prefill_tokens: int = 2048, decode_batch: int = 64,
                     context: int = 1024, prefill_reps: int = 3, decode_reps: int = 10) -> list[dict[str, Any]]:
    """One row per partition: prefill SMs, decode SMs, median prefill iteration and decode step (ms)."""
    rows = []
    with torch.inference_mode(), synthetic_batches(engine, prefill_tokens, decode_batch, context) as (pb, db):
        for _, part in sorted(engine.partitions.partitions().items()):
            key = part.prefill_sms
            with _on(part.prefill_stream):
                _prefill(engine, pb, part.prefill_stream)  # warm-up
                pt = _timed(lambda s=part.prefill_stream: _prefill(engine, pb, s), prefill_reps)
            with _on(part.decode_stream):
                engine.decode_worker.run_step(db, key)
                dt = _timed(lambda k=key: engine.decode_worker.run_step(db, k), decode_reps)
            rows.append({"prefill_sms": part.prefill_sms, "decode_sms": part.decode_sms,
                         f"prefill{prefill_tokens}_ms": _median_ms(pt),
                         f"decode{decode_batch}_ctx{context}_ms": _median_ms(dt)})
    return rows


def interference(engine: SemiPDEngine, prefill_sms: int, prefill_tokens: int = 2048, decode_batch: int = 64,
                 context: int = 1024, seconds: float = 1.0) -> dict[str, Any]:
    """Decode step (batch `decode_batch`, `context` tokens) on the decode side of the
    `prefill_sms` partition: alone, beside back-to-back prefill iterations of
    `prefill_tokens` on the prefill side (another thread), and alone again. ``slowdown`` compares
    medians; ``slowdown_mean`` compares means, which also counts the occasional stalled step."""
    part = engine.partitions.partitions()[prefill_sms]
    device = engine.device
    stop = threading.Event()
    prefill_times: list[float] = []

    def prefill_loop(batch: Batch) -> None:
        if device.type == "cuda":
            torch.cuda.set_device(device.index)
        with torch.inference_mode(), _on(part.prefill_stream):
            while not stop.is_set():
                t0 = time.perf_counter()
                _prefill(engine, batch, part.prefill_stream)
                prefill_times.append(time.perf_counter() - t0)

    def decode_for(batch: Batch, duration: float) -> list[float]:
        times: list[float] = []
        with torch.inference_mode(), _on(part.decode_stream):
            end = time.perf_counter() + duration
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                engine.decode_worker.run_step(batch, part.prefill_sms)
                times.append(time.perf_counter() - t0)
        return times

    with synthetic_batches(engine, prefill_tokens, decode_batch, context) as (pb, db):
        with torch.inference_mode(), _on(part.prefill_stream):
            _prefill(engine, pb, part.prefill_stream)
        decode_for(db, 0.1)  # warm-up
        before = decode_for(db, seconds)
        thread = threading.Thread(target=prefill_loop, args=(pb,), daemon=True)
        thread.start()
        while not prefill_times:
            if not thread.is_alive():
                raise RuntimeError("the prefill thread died (see the log)")
            time.sleep(0.001)
        together = decode_for(db, seconds)
        stop.set()
        thread.join()
        after = decode_for(db, seconds)
    alone = before + after
    return {
        "prefill_sms": part.prefill_sms, "decode_sms": part.decode_sms,
        "decode_alone_ms": _median_ms(alone), "decode_together_ms": _median_ms(together),
        "decode_alone_mean_ms": 1000 * statistics.fmean(alone),
        "decode_together_mean_ms": 1000 * statistics.fmean(together),
        "decode_together_p90_ms": 1000 * sorted(together)[int(0.9 * (len(together) - 1))],
        "decode_together_max_ms": 1000 * max(together),
        "slowdown": statistics.median(together) / statistics.median(alone),
        "slowdown_mean": statistics.fmean(together) / statistics.fmean(alone),
        "prefill_together_ms": _median_ms(prefill_times), "decode_steps_together": len(together),
    }
