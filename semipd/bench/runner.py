"""One benchmark run: send requests on an arrival schedule and collect their records.

Requests are released at their arrival offsets (seconds from the start of the run) whatever
happens to earlier ones, as ``vllm bench serve`` does; with `max_concurrency` a released
request waits for a free slot before it is sent, and its TTFT counts from the send.

A run stops early, keeping what finished, when the first `RunConfig.fail_fast_after` requests
to finish all failed for one cause (the rest would too: a wrong model name, token ids outside
the vocabulary, prompts too long), or on Ctrl-C; `RunResult.stopped` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from semipd.bench.client import Endpoint, send_request
from semipd.bench.datasets import BenchRequest
from semipd.bench.failures import failure_cause
from semipd.bench.records import RequestRecord
from semipd.clock import Clock, RealClock
from semipd.workload import gamma_arrivals


@dataclass(frozen=True)
class RunConfig:
    """How to send: concurrency cap (None = unlimited), per-request timeout, progress bar, and
    after how many finished requests that all failed for one cause to stop (None: never)."""

    max_concurrency: int | None = None
    request_timeout_s: float = 6 * 3600.0
    show_progress: bool = True
    fail_fast_after: int | None = 10

    def __post_init__(self) -> None:
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1 or None, got {self.max_concurrency}")
        if self.fail_fast_after is not None and self.fail_fast_after < 1:
            raise ValueError(f"fail_fast_after must be >= 1 or None, got {self.fail_fast_after}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")


@dataclass(frozen=True)
class RunResult:
    """The records of the requests that finished (in request order; every request unless the run
    stopped early) and the run's length: start to last reply (or to the stop)."""

    records: tuple[RequestRecord, ...]
    duration: float
    stopped: str = ""
    """Why the run stopped before every request finished ('' when it did not)."""


INTERRUPTED = "interrupted (Ctrl-C)"


@dataclass
class _RunState:
    """What a run has so far, shared with `run_benchmark` so that an interrupted run keeps it."""

    start: float | None = None
    finished: list[RequestRecord] = field(default_factory=list)
    stopped: str = ""


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
    """Run the benchmark in a fresh event loop (see `run_requests`); Ctrl-C ends it early with the
    records of the requests that finished by then."""
    clock = clock or RealClock()
    state = _RunState()
    try:
        return asyncio.run(run_requests(endpoint, requests, arrivals, config, clock, state))
    except KeyboardInterrupt:
        elapsed = clock.now() - state.start if state.start is not None else 0.0
        return RunResult(_in_order(state.finished), max(elapsed, math.ulp(1.0)), INTERRUPTED)


async def run_requests(
    endpoint: Endpoint,
    requests: Sequence[BenchRequest],
    arrivals: np.ndarray,
    config: RunConfig,
    clock: Clock,
    state: _RunState | None = None,
) -> RunResult:
    """Send `requests[i]` at `arrivals[i]` seconds from now; wait for every reply, or stop early
    (see the module docstring). `state` collects the records as they finish."""
    state = state if state is not None else _RunState()
    if len(arrivals) != len(requests):
        raise ValueError(f"arrivals has {len(arrivals)} entries for {len(requests)} requests")
    if not requests:
        raise ValueError("requests must not be empty")
    if not np.all(np.isfinite(arrivals)) or np.any(np.diff(arrivals) < 0):
        raise ValueError("arrivals must be finite and non-decreasing")
    asyncio.get_running_loop().set_exception_handler(_quiet_teardown)
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
    stop = asyncio.Event()

    def check_fail_fast() -> None:
        n, done = config.fail_fast_after, state.finished
        if n is None or len(done) != n or state.stopped or any(r.success for r in done):
            return
        if len({failure_cause(r.error) for r in done}) == 1:
            state.stopped = f"the first {n} requests all failed: {done[0].error}"
            stop.set()

    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=True) as session:
        start = state.start = clock.now()

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
            state.finished.append(record)
            check_fail_fast()
            return record

        with progress:
            tasks = []
            for index, (request, offset) in enumerate(zip(requests, arrivals.tolist(), strict=True)):
                delay = start + offset - clock.now()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    break
                tasks.append(asyncio.create_task(one(index, request, offset)))
            everything = asyncio.gather(*tasks)
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({everything, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not everything.done():
                everything.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await everything
        duration = clock.now() - start
    return RunResult(_in_order(state.finished), max(duration, math.ulp(1.0)), state.stopped)


def _quiet_teardown(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """The loop's exception handler: a connection error raised by a request torn down while the run
    stops (Ctrl-C cancels every open request) is expected, not a crash to print a traceback for."""
    if isinstance(context.get("exception"), aiohttp.ClientError | ConnectionError):
        return
    loop.default_exception_handler(context)


def _in_order(records: Sequence[RequestRecord]) -> tuple[RequestRecord, ...]:
    return tuple(sorted(records, key=lambda r: r.index))
