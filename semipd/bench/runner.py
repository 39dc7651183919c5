"""One benchmark run: send requests on an arrival schedule and collect their records.

Requests are released at their arrival offsets (seconds from the start of the run) whatever
happens to earlier ones, as ``vllm bench serve`` does; with `max_concurrency` a released
request waits for a free slot before it is sent, and its TTFT counts from the send.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from semipd.bench.client import Endpoint, send_request
from semipd.bench.datasets import BenchRequest
from semipd.bench.records import RequestRecord
from semipd.clock import Clock, RealClock
from semipd.workload import gamma_arrivals


@dataclass(frozen=True)
class RunConfig:
    """How to send: concurrency cap (None = unlimited), per-request timeout, progress bar."""

    max_concurrency: int | None = None
    request_timeout_s: float = 6 * 3600.0
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1 or None, got {self.max_concurrency}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")


@dataclass(frozen=True)
class RunResult:
    """Every request's record (in request order) and the run's length: start to last reply."""

    records: tuple[RequestRecord, ...]
    duration: float


def dataset_rng(seed: int) -> np.random.Generator:
    """The generator for prompts and lengths; independent of `arrival_rng` for the same seed."""
    return np.random.default_rng([seed, 0])


def arrival_rng(seed: int) -> np.random.Generator:
    """The generator for arrival gaps."""
    return np.random.default_rng([seed, 1])


def arrival_offsets(
    requests: Sequence[BenchRequest],
    rate: float | None,
    burstiness: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """When to send each request, seconds from the start of the run.

    `rate` None replays the requests' own (trace) `arrival_time`s shifted so the first is at
    0; otherwise gamma gaps at `rate` req/s (`burstiness` 1 = Poisson, `rate` inf = all at once).
    """
    if rate is None:
        times = [r.arrival_time for r in requests]
        if any(t is None for t in times):
            raise ValueError("trace timestamps need a trace dataset (its requests carry arrival times)")
        offsets = np.asarray(times, dtype=np.float64)
        return offsets - offsets.min() if offsets.size else offsets
    return gamma_arrivals(rate, burstiness, rng, num_requests=len(requests))


def run_benchmark(
    endpoint: Endpoint,
    requests: Sequence[BenchRequest],
    arrivals: np.ndarray,
    config: RunConfig,
    clock: Clock | None = None,
) -> RunResult:
    """Run the benchmark to completion in a fresh event loop (see `run_requests`)."""
    return asyncio.run(run_requests(endpoint, requests, arrivals, config, clock or RealClock()))


async def run_requests(
    endpoint: Endpoint,
    requests: Sequence[BenchRequest],
    arrivals: np.ndarray,
    config: RunConfig,
    clock: Clock,
) -> RunResult:
    """Send `requests[i]` at `arrivals[i]` seconds from now; wait for every reply."""
    if len(arrivals) != len(requests):
        raise ValueError(f"arrivals has {len(arrivals)} entries for {len(requests)} requests")
    if not requests:
        raise ValueError("requests must not be empty")
    if not np.all(np.isfinite(arrivals)) or np.any(np.diff(arrivals) < 0):
        raise ValueError("arrivals must be finite and non-decreasing")
    limit = config.max_concurrency or 0
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, ttl_dns_cache=300, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=config.request_timeout_s)
    slots = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None
    progress = Progress(
        TextColumn("[bold]bench"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("in flight {task.fields[in_flight]}  failed {task.fields[failed]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not config.show_progress,
        transient=False,
    )
    task_id = progress.add_task("bench", total=len(requests), in_flight=0, failed=0)
    counts = {"in_flight": 0, "failed": 0}

    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=True) as session:
        start = clock.now()

        async def one(index: int, request: BenchRequest, scheduled: float) -> RequestRecord:
            if slots is not None:
                await slots.acquire()
            counts["in_flight"] += 1
            progress.update(task_id, **counts)
            try:
                record = await send_request(session, endpoint, request, index, scheduled, clock, start)
            finally:
                counts["in_flight"] -= 1
                if slots is not None:
                    slots.release()
            counts["failed"] += not record.success
            progress.update(task_id, advance=1, **counts)
            return record

        with progress:
            tasks = []
            for index, (request, offset) in enumerate(zip(requests, arrivals.tolist(), strict=True)):
                delay = start + offset - clock.now()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(index, request, offset)))
            records = await asyncio.gather(*tasks)
        duration = clock.now() - start
    return RunResult(records=tuple(records), duration=max(duration, math.ulp(1.0)))
