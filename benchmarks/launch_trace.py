"""Diagnostics of the Semi-PD switch benchmark (``bench_semipd.py``, GPU).

`LaunchTrace` watches the prefill worker's launch stretches (the spans between
``begin_launch`` and ``end_launch`` during which a switch waits for it) and keeps, for each
one longer than 5 ms: which stretch of its batch it was, whether it followed a move to a new
stream, and where layer 0's part of it went (input preparation, norm, attention, MLP). While a
stretch runs long it samples the top frames of every thread once, and it records the cyclic
GC's pauses. This is how the first-GEMM-of-a-new-shape stall was found (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import traceback
from typing import Any

from semipd.engine.semi_pd.engine import SemiPDEngine

LONG_S = 0.005
"""A stretch longer than this is recorded."""


class LaunchTrace:
    """``with LaunchTrace(engine) as trace: ...`` then ``trace.results()``. Wraps the engine's
    partition manager and prefill runner while active; everything is restored on exit."""

    def __init__(self, engine: SemiPDEngine) -> None:
        self.engine = engine
        self.worker = engine.prefill_worker
        self.long_stretches: list[dict[str, Any]] = []
        self.stacks: list[dict[str, list[str]]] = []
        self.gc_pauses: list[tuple[int, float]] = []
        self._stretch: dict[str, Any] = {"begin": 0.0, "index": 0, "iteration": -1, "part": None, "open": False}
        self._parts: dict[str, float] = {}
        self._gc_start = 0.0
        self._hooks: list[Any] = []
        self._stop = threading.Event()
        self._dog = threading.Thread(target=self._watchdog, name="launch-trace", daemon=True)

    # -- wrappers ------------------------------------------------------------------------------
    def _begin(self, phase: str) -> Any:
        part = self._begin_launch(phase)
        if phase == "prefill":
            s = self._stretch
            if self.worker.num_iterations != s["iteration"]:
                s.update(iteration=self.worker.num_iterations, index=0)
            else:
                s["index"] += 1
            s.update(begin=time.perf_counter(), moved=part is not s["part"], part=part, open=True)
        return part

    def _end(self, phase: str) -> None:
        if phase == "prefill":
            s = self._stretch
            s["open"] = False
            took = time.perf_counter() - s["begin"]
            if took > LONG_S:
                self.long_stretches.append({"ms": round(1000 * took, 2), "stretch": s["index"], "moved": s["moved"],
                                            "parts_ms": {k: round(1000 * v, 2) for k, v in self._parts.items()}})
            self._parts.clear()
        self._end_launch(phase)

    def _prepare(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self._runner_prepare(*args, **kwargs)
        finally:
            self._parts["prepare"] = time.perf_counter() - start

    def _hook(self, name: str, module: Any) -> None:
        def pre(_module: Any, _args: Any) -> None:
            if threading.current_thread() is self.worker:
                self._parts[name + "_start"] = time.perf_counter()

        def post(_module: Any, _args: Any, _out: Any) -> None:
            if threading.current_thread() is self.worker and name + "_start" in self._parts:
                self._parts[name] = time.perf_counter() - self._parts.pop(name + "_start")

        self._hooks += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        elif self._gc_start:
            self.gc_pauses.append((info["generation"], time.perf_counter() - self._gc_start))

    def _watchdog(self) -> None:
        seen = None
        while not self._stop.wait(0.002):
            s = self._stretch
            begin = s["begin"]
            if s["open"] and begin != seen and time.perf_counter() - begin > LONG_S + 0.001 and len(self.stacks) < 40:
                seen = begin
                names = {t.ident: t.name for t in threading.enumerate()}
                self.stacks.append({
                    names.get(ident, str(ident)): [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}"
                                                   for f in traceback.extract_stack(frame)[-4:]]
                    for ident, frame in sys._current_frames().items()})

    # -- context manager -------------------------------------------------------------------------
    def __enter__(self) -> LaunchTrace:
        pm = self.engine.partitions
        self._begin_launch, self._end_launch = pm.begin_launch, pm.end_launch
        self._runner_prepare = self.worker.runner.prepare
        pm.begin_launch, pm.end_launch = self._begin, self._end
        self.worker.runner.prepare = self._prepare
        layer0 = self.worker.runner.model.model.layers[0]
        for name, module in (("norm0", layer0.input_layernorm), ("attn0", layer0.self_attn), ("mlp0", layer0.mlp)):
            self._hook(name, module)
        gc.callbacks.append(self._on_gc)
        self._dog.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._dog.join()
        gc.callbacks.remove(self._on_gc)
        for hook in self._hooks:
            hook.remove()
        del self.engine.partitions.begin_launch, self.engine.partitions.end_launch, self.worker.runner.prepare

    def results(self) -> dict[str, Any]:
        return {"prefill_stretches_over_5ms": self.long_stretches, "stacks_in_long_stretches": self.stacks,
                "gc_runs": len(self.gc_pauses),
                "gc_max_pause_ms": round(1000 * max((t for _, t in self.gc_pauses), default=0.0), 2),
                "gc_gen2_runs": sum(1 for g, _ in self.gc_pauses if g == 2)}
