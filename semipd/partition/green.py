"""CUDA green-context SM partitions for Semi-PD (in-process, through ``cuda.bindings.driver``).

At start-up every split the controller may choose is created once (a green context costs
~2 ms to create; a switch must cost microseconds): for each prefill SM count ``p`` on the
grid, ``cuDevSmResourceSplitByCount`` gives a group of ``p`` SMs (prefill) and the
remainder (decode), so the two phases never share an SM. Each side gets a non-blocking
stream created from its green context, wrapped as a ``torch.cuda.ExternalStream``.

Switch protocol (no request is dropped, duplicated or stalled). A worker brackets every
stretch of kernel launches with ``begin_launch(phase)`` / ``end_launch(phase)`` (the
prefill worker does so per decoder layer, the decode worker per step); between them it is
never issuing work. A switch is acknowledged for a phase as soon as that worker is outside
a launch stretch, because its next ``begin_launch`` will hand out the new partition::

    controller                         prefill worker                 decode worker
    request_sm_reallocation(a)         launching layer k              waiting for its step
      target := a, gen += 1 ---------------------------------------> ack now (not launching)
                                       end_launch: ack                ...
                                       begin_launch -> a's stream     begin_launch -> a's stream
                                       (waits on its old stream)      (waits on its old stream)
    switch latency = last ack - request   (from then on, no new work on the old split)

Work already launched on the old stream finishes there; a worker that moves orders its new
stream after its old one (``wait_stream``) so its own work stays in order. How long that
old work keeps running (the drain) is bounded by the worker, not by this manager: one decode
step, and for prefill the few layers it launches ahead of the GPU.

Factories. `GreenContextFactory` makes disjoint SM partitions; `SharedStreamFactory` makes
two plain streams over the whole GPU (CUDA without green contexts, or partitioning turned
off); with no factory (CPU) partitions carry no streams. The manager's status names the
backend (``green_contexts``, ``shared_streams``, ``none``) and, when partitions were wanted
but cannot be had, why (``unavailable_reason``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from semipd.allocation import HOPPER_MIN_SMS, HOPPER_SPLIT_GRANULARITY, SMAllocation, SMGrid
from semipd.clock import Clock, RealClock

logger = logging.getLogger(__name__)

PHASES = ("prefill", "decode")

ReallocationListener = Callable[[SMAllocation, bool], None]
"""``listener(allocation, accepted)``: called after every reallocation request."""


@dataclass(frozen=True)
class Partition:
    """One pre-created split: prefill's SMs and stream, decode's SMs and stream.
    Streams are None when the backend has no streams (CPU)."""

    prefill_sms: int
    decode_sms: int
    prefill_stream: Any = None
    decode_stream: Any = None

    def stream(self, phase: str) -> Any:
        return self.prefill_stream if phase == "prefill" else self.decode_stream

    def sms(self, phase: str) -> int:
        return self.prefill_sms if phase == "prefill" else self.decode_sms


class PartitionFactory(Protocol):
    """Creates the partition giving `prefill_sms` SMs to prefill."""

    backend: str
    total_sms: int

    def create(self, prefill_sms: int) -> Partition: ...


def green_contexts_unavailable_reason(device_index: int = 0) -> str | None:
    """None when green contexts can be used on `device_index`, else a human-readable reason."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        from cuda.bindings import driver
    except ImportError:
        return "cuda-bindings is not installed (pip install cuda-python)"
    major, _ = torch.cuda.get_device_capability(device_index)
    if major < 9:
        return f"green contexts need compute capability >= 9.0 for useful splits; device has {major}.x"
    if not hasattr(driver, "cuGreenCtxCreate"):
        return "the installed cuda-bindings has no green-context API"
    return None


class GreenContextFactory:
    """Creates disjoint (group, remainder) stream pairs with the driver API."""

    backend = "green_contexts"

    def __init__(self, device_index: int = 0) -> None:
        import torch
        from cuda.bindings import driver as cu

        self._cu = cu
        self._torch = torch
        self.device_index = device_index
        torch.cuda.init()
        torch.zeros(1, device=f"cuda:{device_index}")  # make the primary context current
        self._check(cu.cuInit(0))
        self._dev = self._check(cu.cuDeviceGet(device_index))
        self._sm_resource = self._check(
            cu.cuDeviceGetDevResource(self._dev, cu.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM))
        self.total_sms = int(self._sm_resource.sm.smCount)
        self._keep: list[Any] = []  # green contexts must outlive their streams

    def grid(self) -> SMGrid:
        """The splits used on this device: multiples of 8 SMs, at least 16 a side (`semipd.allocation`)."""
        return SMGrid(self.total_sms, HOPPER_SPLIT_GRANULARITY, HOPPER_MIN_SMS)

    def _check(self, result: tuple) -> Any:
        if int(result[0]) != 0:
            raise RuntimeError(f"CUDA driver call failed: {result[0]}")
        return result[1] if len(result) == 2 else result[1:]

    def _stream(self, resource: Any) -> Any:
        cu = self._cu
        desc = self._check(cu.cuDevResourceGenerateDesc([resource], 1))
        ctx = self._check(cu.cuGreenCtxCreate(desc, self._dev, cu.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM))
        raw = self._check(cu.cuGreenCtxStreamCreate(ctx, cu.CUstream_flags.CU_STREAM_NON_BLOCKING, 0))
        self._keep.append((ctx, raw))
        return self._torch.cuda.ExternalStream(int(raw), device=self._torch.device("cuda", self.device_index))

    def create(self, prefill_sms: int) -> Partition:
        """A split with `prefill_sms` SMs for prefill (as granted by the driver) and the rest for decode."""
        r = self._cu.cuDevSmResourceSplitByCount(1, self._sm_resource, 0, prefill_sms)
        if int(r[0]) != 0:
            raise RuntimeError(f"cannot split off {prefill_sms} SMs: {r[0]}")
        groups, _, remainder = r[1], r[2], r[3]
        group = groups[0]
        return Partition(int(group.sm.smCount), int(remainder.sm.smCount), self._stream(group), self._stream(remainder))


class SharedStreamFactory:
    """Two plain CUDA streams over the whole GPU: the two workers overlap but nothing limits
    either phase's SMs. The SM counts of its partitions are nominal."""

    backend = "shared_streams"

    def __init__(self, total_sms: int, device_index: int = 0) -> None:
        import torch

        self._torch = torch
        self.total_sms = total_sms
        self.device_index = device_index

    def create(self, prefill_sms: int) -> Partition:
        device = self._torch.device("cuda", self.device_index)
        return Partition(prefill_sms, self.total_sms - prefill_sms, self._torch.cuda.Stream(device),
                         self._torch.cuda.Stream(device))


def _latency_summary(sorted_seconds: list[float]) -> dict[str, float]:
    n = len(sorted_seconds)
    return {"p50": 1000 * sorted_seconds[n // 2], "p99": 1000 * sorted_seconds[min(n - 1, int(0.99 * n))],
            "max": 1000 * sorted_seconds[-1], "count": n}


class PartitionManager:
    """`ResourceManager` over pre-created partitions. With ``factory=None`` (CPU) it keeps the
    same bookkeeping and protocol but hands out no streams. `unavailable_reason` says why
    SM partitions could not be had (shown in the status)."""

    def __init__(self, grid: SMGrid, initial_sm_allocation: SMAllocation, factory: PartitionFactory | None = None,
                 reachable_prefill_sms: list[int] | None = None, clock: Clock | None = None,
                 latency_history: int = 1000, unavailable_reason: str | None = None) -> None:
        self.grid = grid
        self._factory = factory
        self._clock = clock or RealClock()
        self.unavailable_reason = unavailable_reason
        self._reachable = sorted(set(reachable_prefill_sms or grid.prefill_sm_choices()))
        bad = [p for p in self._reachable if p not in grid.prefill_sm_choices()]
        if bad:
            raise ValueError(f"reachable_prefill_sms {bad} are not splits of {grid}")
        self._target = grid.prefill_sms(initial_sm_allocation)
        if self._target not in self._reachable:
            raise ValueError(f"initial allocation {initial_sm_allocation} is outside reachable_prefill_sms")
        self._partitions: dict[int, Partition] = {}
        self._lock = threading.Lock()
        self._switched = threading.Condition(self._lock)
        self._generation = 0
        self._requested_at = self._clock.now()
        self._acked: dict[str, int] = {p: 0 for p in PHASES}
        self._ack_time: dict[str, float] = {}
        self._launching: dict[str, bool] = {p: False for p in PHASES}
        self._listeners: tuple[ReallocationListener, ...] = ()
        self.switch_latencies: deque[float] = deque(maxlen=latency_history)
        """Seconds from a switch request until neither worker will launch more work on the old split."""
        self.ack_latencies: dict[str, deque[float]] = {p: deque(maxlen=latency_history) for p in PHASES}
        """Per phase: seconds from a switch request until that worker was outside a launch stretch."""
        self.num_reallocations = 0
        self.num_refused = 0
        self.running = False

    @property
    def backend(self) -> str:
        return self._factory.backend if self._factory else "none"

    @property
    def reachable_prefill_sms(self) -> list[int]:
        return list(self._reachable)

    def add_listener(self, listener: ReallocationListener) -> None:
        """Call ``listener(allocation, accepted)`` after each `request_sm_reallocation` (in the
        caller's thread, outside the manager's lock; exceptions are logged)."""
        with self._lock:
            self._listeners = (*self._listeners, listener)

    # -- ResourceManager protocol ------------------------------------------------
    def start(self) -> None:
        """Create every reachable partition up front (a few ms each)."""
        for p in self._reachable:
            if p not in self._partitions:
                got = self._factory.create(p) if self._factory else Partition(p, self.grid.total_sms - p)
                self._partitions[p] = got
                if got.prefill_sms != p:
                    logger.warning("asked for %d prefill SMs, the driver granted %d", p, got.prefill_sms)
        self.running = True

    def stop(self) -> None:
        self.running = False

    def request_sm_reallocation(self, new_allocation: SMAllocation) -> bool:
        """Schedule a switch; raises ValueError for a split this manager cannot realise."""
        try:
            p = self.grid.prefill_sms(new_allocation)
            if p not in self._reachable:
                raise ValueError(f"allocation {new_allocation} ({p} prefill SMs) was not pre-created; "
                                 f"reachable prefill SMs: {self._reachable}")
        except ValueError:
            with self._lock:
                self.num_refused += 1
            self._notify(new_allocation, False)
            raise
        with self._lock:
            if p != self._target:
                self._target = p
                self._generation += 1
                self._requested_at = self._clock.now()
                self._ack_time.clear()
                self.num_reallocations += 1
                for phase in PHASES:
                    if not self._launching[phase]:
                        self._ack(phase)
        self._notify(new_allocation, True)
        return True

    def _notify(self, allocation: SMAllocation, accepted: bool) -> None:
        for listener in self._listeners:
            try:
                listener(allocation, accepted)
            except Exception:
                logger.warning("reallocation listener %r failed", listener, exc_info=True)

    def current_allocation(self) -> SMAllocation:
        """The allocation the workers are (or are moving) to."""
        return self.grid.allocation(self._target)

    def wait_switched(self, timeout: float | None = None) -> bool:
        """Block until both workers moved to the current target; False on timeout."""
        with self._switched:
            return self._switched.wait_for(lambda: not self._pending(), timeout)

    def switch_pending(self) -> list[str]:
        """The phases that have not moved to the current target yet."""
        with self._lock:
            return self._pending()

    def _pending(self) -> list[str]:
        """Phases not yet on the current target (caller holds the lock)."""
        return [ph for ph in PHASES if self._acked[ph] != self._generation]

    def get_status(self) -> dict[str, Any]:
        pending = self.switch_pending()
        with self._lock:
            part = self._partitions.get(self._target) or Partition(self._target, self.grid.total_sms - self._target)
            lat = sorted(self.switch_latencies)
            per_phase = {ph: sorted(self.ack_latencies[ph]) for ph in PHASES}
        alloc = self.grid.allocation(self._target)
        status: dict[str, Any] = {
            "backend": self.backend,
            "sm_limited": self.backend == "green_contexts",
            "unavailable_reason": self.unavailable_reason,
            "running": self.running,
            "current_sm_allocation": alloc.as_dict(),
            "prefill_sms": part.prefill_sms,
            "decode_sms": part.decode_sms,
            "sm_grid": self.grid.as_dict(),
            "reachable_prefill_sms": list(self._reachable),
            "num_reallocations": self.num_reallocations,
            "num_refused": self.num_refused,
            "switch_pending_for": pending,
        }
        if lat:
            status["switch_latency_ms"] = _latency_summary(lat)
            status["ack_latency_ms"] = {ph: _latency_summary(v) for ph, v in per_phase.items() if v}
        return status

    # -- worker side ---------------------------------------------------------------
    def _ack(self, phase: str) -> None:
        """Record that `phase` moved to the current target (caller holds the lock)."""
        if self._acked[phase] == self._generation:
            return
        self._acked[phase] = self._generation
        now = self._clock.now()
        self._ack_time[phase] = now
        self.ack_latencies[phase].append(now - self._requested_at)
        if len(self._ack_time) == len(PHASES):
            self.switch_latencies.append(max(self._ack_time.values()) - self._requested_at)
            self._switched.notify_all()

    def begin_launch(self, phase: str) -> Partition:
        """A worker is about to launch work: the partition whose stream it must launch on."""
        with self._lock:
            part = self._partitions.get(self._target)
            if part is None:
                raise RuntimeError("PartitionManager.start() was not called")
            self._launching[phase] = True
            self._ack(phase)
            return part

    def end_launch(self, phase: str) -> None:
        """The worker finished launching; a switch requested meanwhile is acknowledged now
        (its next `begin_launch` returns the new partition)."""
        with self._lock:
            self._launching[phase] = False
            self._ack(phase)

    @contextlib.contextmanager
    def launching(self, phase: str) -> Iterator[Partition]:
        """``with manager.launching(phase) as part:`` brackets one launch stretch."""
        part = self.begin_launch(phase)
        try:
            yield part
        finally:
            self.end_launch(phase)

    def partitions(self) -> dict[int, Partition]:
        """Every pre-created partition by prefill SM count (for capturing graphs per partition)."""
        return dict(self._partitions)
