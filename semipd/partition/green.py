"""CUDA green-context SM partitions for Semi-PD (in-process, through ``cuda.bindings.driver``).

At start-up every split the controller may choose is created once (a green context costs
~2 ms to create; a switch must cost microseconds): for each prefill SM count ``p`` on the
grid, ``cuDevSmResourceSplitByCount`` gives a group of ``p`` SMs (prefill) and the
remainder (decode), so the two phases never share an SM. Each side gets a non-blocking
stream created from its green context, wrapped as a ``torch.cuda.ExternalStream``.

Switch protocol (no request is dropped, duplicated or stalled)::

    controller                       prefill worker               decode worker
    request_sm_reallocation(a) ----> target := a, gen += 1
                                     next iteration boundary:     next step boundary:
                                     partition("prefill")         partition("decode")
                                     -> stream of a, ack(gen)     -> stream of a, ack(gen)
    switch latency = last ack - request

Work already launched on the old stream finishes there; a worker that moves orders its new
stream after its old one (``wait_stream``) so its own work stays in order.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from semipd.allocation import SMAllocation, SMGrid
from semipd.clock import Clock, RealClock

logger = logging.getLogger(__name__)

PHASES = ("prefill", "decode")


@dataclass(frozen=True)
class Partition:
    """One pre-created split: prefill's SMs and stream, decode's SMs and stream.
    Streams are None when the backend has no real partitions (CPU)."""

    prefill_sms: int
    decode_sms: int
    prefill_stream: Any = None
    decode_stream: Any = None

    def stream(self, phase: str) -> Any:
        return self.prefill_stream if phase == "prefill" else self.decode_stream

    def sms(self, phase: str) -> int:
        return self.prefill_sms if phase == "prefill" else self.decode_sms


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

    def __init__(self, device_index: int = 0) -> None:
        import torch
        from cuda.bindings import driver as cu

        self._cu = cu
        self._torch = torch
        torch.cuda.init()
        torch.zeros(1, device=f"cuda:{device_index}")  # make the primary context current
        self._check(cu.cuInit(0))
        self._dev = self._check(cu.cuDeviceGet(device_index))
        self._sm_resource = self._check(
            cu.cuDeviceGetDevResource(self._dev, cu.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM))
        self.total_sms = int(self._sm_resource.sm.smCount)
        self._keep: list[Any] = []  # green contexts must outlive their streams

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
        return self._torch.cuda.ExternalStream(int(raw))

    def create(self, prefill_sms: int) -> Partition:
        """A split with `prefill_sms` SMs for prefill (as granted by the driver) and the rest for decode."""
        r = self._cu.cuDevSmResourceSplitByCount(1, self._sm_resource, 0, prefill_sms)
        if int(r[0]) != 0:
            raise RuntimeError(f"cannot split off {prefill_sms} SMs: {r[0]}")
        groups, _, remainder = r[1], r[2], r[3]
        group = groups[0]
        return Partition(int(group.sm.smCount), int(remainder.sm.smCount), self._stream(group), self._stream(remainder))


class PartitionManager:
    """`ResourceManager` over pre-created partitions. With ``factory=None`` (CPU, or no green
    contexts) it keeps the same bookkeeping and protocol but hands out no streams."""

    def __init__(self, grid: SMGrid, initial_sm_allocation: SMAllocation, factory: GreenContextFactory | None = None,
                 reachable_prefill_sms: list[int] | None = None, clock: Clock | None = None,
                 latency_history: int = 1000) -> None:
        self.grid = grid
        self._factory = factory
        self._clock = clock or RealClock()
        self._reachable = sorted(reachable_prefill_sms or grid.prefill_sm_choices())
        self._target = grid.prefill_sms(initial_sm_allocation)
        if self._target not in self._reachable:
            raise ValueError(f"initial allocation {initial_sm_allocation} is outside reachable_prefill_sms")
        self._partitions: dict[int, Partition] = {}
        self._lock = threading.Lock()
        self._generation = 0
        self._requested_at = self._clock.now()
        self._acked: dict[str, int] = {p: 0 for p in PHASES}
        self._ack_time: dict[str, float] = {}
        self.switch_latencies: deque[float] = deque(maxlen=latency_history)
        self.num_reallocations = 0
        self.running = False

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
        p = self.grid.prefill_sms(new_allocation)
        if p not in self._reachable:
            raise ValueError(f"allocation {new_allocation} ({p} prefill SMs) was not pre-created; "
                             f"reachable prefill SMs: {self._reachable}")
        with self._lock:
            if p == self._target:
                return True
            self._target = p
            self._generation += 1
            self._requested_at = self._clock.now()
            self._ack_time.clear()
            self.num_reallocations += 1
        return True

    def get_status(self) -> dict[str, Any]:
        with self._lock:
            part = self._partitions.get(self._target) or Partition(self._target, self.grid.total_sms - self._target)
            pending = [ph for ph in PHASES if self._acked[ph] != self._generation]
            lat = sorted(self.switch_latencies)
        alloc = self.grid.allocation(self._target)
        status: dict[str, Any] = {
            "backend": "green_contexts" if self._factory else "none",
            "running": self.running,
            "current_sm_allocation": alloc.as_dict(),
            "prefill_sms": part.prefill_sms,
            "decode_sms": part.decode_sms,
            "sm_grid": self.grid.as_dict(),
            "reachable_prefill_sms": list(self._reachable),
            "num_reallocations": self.num_reallocations,
            "switch_pending_for": pending,
        }
        if lat:
            status["switch_latency_ms"] = {
                "p50": 1000 * lat[len(lat) // 2], "p99": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
                "max": 1000 * lat[-1], "count": len(lat)}
        return status

    # -- worker side ---------------------------------------------------------------
    def partition(self, phase: str) -> Partition:
        """Called by a worker at each iteration boundary: the partition it must run on now.
        The first call after a switch acknowledges it for `phase`."""
        with self._lock:
            part = self._partitions.get(self._target)
            if part is None:
                raise RuntimeError("PartitionManager.start() was not called")
            if self._acked[phase] != self._generation:
                self._acked[phase] = self._generation
                self._ack_time[phase] = self._clock.now()
                if len(self._ack_time) == len(PHASES):
                    self.switch_latencies.append(max(self._ack_time.values()) - self._requested_at)
            return part

    def partitions(self) -> dict[int, Partition]:
        """Every pre-created partition by prefill SM count (for capturing graphs per partition)."""
        return dict(self._partitions)
