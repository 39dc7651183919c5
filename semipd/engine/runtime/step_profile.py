"""Where a step's time goes: device kernels per step under torch.profiler, and wall time spent in
chosen methods of live objects. Used by the engine benchmark; CUDA for `kernel_profile`."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


class MethodTimers:
    """Wall time spent in chosen methods of live objects (wrapped in place, restored by `restore`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._saved: list[tuple[Any, str, Any]] = []

    def wrap(self, obj: Any, method: str, label: str) -> None:
        original = getattr(obj, method)
        self.seconds[label] = 0.0

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start

        self._saved.append((obj, method, original))
        setattr(obj, method, timed_call)

    def restore(self) -> None:
        for obj, method, _ in reversed(self._saved):
            delattr(obj, method)  # the instance attribute; the class method shows again
        self._saved.clear()


_KERNEL_GROUPS = (("attention", ("_decode_stage", "_prefill_kernel")), ("rms_norm", ("_rms_norm",)),
                  ("rope_kv_store", ("_rope", "_store_kvcache")), ("silu_mul", ("_silu_and_mul",)),
                  ("sampling", ("_sample_stage",)), ("linear", ("gemm", "gemv", "cutlass", "xmma", "nvjet", "splitK")))


def kernel_profile(fn: Callable[[], Any], steps: int, trace: Path | None = None) -> dict[str, Any]:
    """Kernel time per step under torch.profiler: total, by group, the top kernels, and the step's wall
    time; with `trace`, the Chrome trace of the profiled steps is written there."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / steps
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    kernels = [(e.key, e.count / steps, e.self_device_time_total / steps) for e in prof.key_averages()
               if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0]
    kernels.sort(key=lambda k: -k[2])
    groups: dict[str, float] = {}
    for name, _, us in kernels:
        group = next((g for g, keys in _KERNEL_GROUPS if any(k in name for k in keys)), "other")
        groups[group] = groups.get(group, 0.0) + us / 1e3
    total = sum(us for _, _, us in kernels) / 1e3
    return {"wall_ms": wall * 1e3, "kernel_ms": total, "kernels_per_step": sum(c for _, c, _ in kernels),
            "idle_ms": wall * 1e3 - total, "groups_ms": groups,
            "top": [{"kernel": name[:90], "calls": calls, "ms": us / 1e3} for name, calls, us in kernels[:15]]}
