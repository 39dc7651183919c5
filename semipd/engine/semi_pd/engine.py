"""`SemiPDEngine`: prefill and decode at the same time on disjoint SM partitions (``mode="semi-pd"``).

Same public surface as `Engine` (``add_request``, ``step``, ``abort``, ``has_unfinished``,
``get_status``, ``tokenizer``, ``model_name``, ``max_model_len``, ``metrics_collector``), so
`AsyncEngine`, `LLM` and the server drive it unchanged. Inside, two worker threads
(`semipd.engine.semi_pd.workers`) share the weights, the paged KV cache and the `BlockAllocator`:

    add_request -> PrefillScheduler -> PrefillWorker (prefill partition's stream)
                      ^                    | hand-off: request + CUDA event (no KV copy)
                      | preemption         v
                      +------------ DecodeScheduler -> DecodeWorker (decode partition's stream,
                                                                     a CUDA graph per partition x bucket;
                                                                     the whole device while prefill is idle)
    step() <- RequestBook (outputs since the last call, waiting briefly when there are none)

The `PartitionManager` pre-creates every reachable split; the SLO-aware controller (or
`set_allocation`) picks one, and each worker moves at its next launch: the decode worker at
its next step, the prefill worker at its next decoder layer. The
workers start with the engine; `stop()` ends them (and the controller).
"""

from __future__ import annotations

import gc
import logging
import random
import sys
import threading
import time
from typing import Any

import torch

from semipd.allocation import SMAllocation
from semipd.clock import Clock
from semipd.engine.common import (
    allocate_kv_cache,
    build_request,
    check_request,
    engine_status,
    load_engine_model,
    piecewise_graphs,
    resolve_device,
)
from semipd.engine.core.messages import TokenDelta
from semipd.engine.engine_config import EngineConfig
from semipd.engine.runtime.cuda_graphs import GraphRunner
from semipd.engine.runtime.model_runner import ModelRunner
from semipd.engine.sampling_params import SamplingParams
from semipd.engine.semi_pd.config import SemiPDConfig
from semipd.engine.semi_pd.decode_worker import DecodeWorker, WholeDeviceBorrow
from semipd.engine.semi_pd.prefill_worker import PrefillWorker
from semipd.engine.semi_pd.request_book import RequestBook
from semipd.engine.semi_pd.startup import (
    WHOLE_DEVICE,
    GraphCapture,
    build_partition_manager,
    capture_partition_graphs,
    capture_prefill_pieces,
    warm_prefill_streams,
)
from semipd.engine.semi_pd.workers import Worker, WorkerContext
from semipd.metrics import SemiPDMetricsCollector
from semipd.metrics.recorder import LifecycleRecorder
from semipd.sched import (
    BlockAllocator,
    DecodeScheduler,
    DecodeSchedulerConfig,
    PrefillScheduler,
    PrefillSchedulerConfig,
    Request,
)
from semipd.sched.ops import check_fits
from semipd.slo import CandidateBounds, SLOAwareResourceController, SLOConstraints
from semipd.slo.predictors import parse_predictor_spec

logger = logging.getLogger(__name__)


class SemiPDEngine:
    """Loads the model, sizes the KV cache, pre-creates the partitions, captures the decode
    graphs, and runs the two workers and the controller (see the module docstring)."""

    def __init__(self, config: EngineConfig, clock: Clock | None = None, delivery: bool = True) -> None:
        if config.mode != "semi-pd":
            raise ValueError(f"SemiPDEngine runs mode 'semi-pd', got mode {config.mode!r}")
        self.config = config
        self.semipd = config.semipd or SemiPDConfig()
        self.device = resolve_device(config.device)
        self.model_name = config.model
        self.model, self.max_model_len, self.tokenizer, self.eos_token_ids = load_engine_model(config, self.device)
        self.model_config = self.model.config
        self.partitions = build_partition_manager(self.device, self.semipd)
        self.partitions.start()
        self.kv_cache = allocate_kv_cache(config, self.model, self.device, self.max_model_len)
        self.graph_capture: GraphCapture | None = None
        self.piecewise_capture: GraphCapture | None = None
        graphs = None
        whole_device = None
        if self.semipd.decode_borrows_idle_prefill and self.partitions.backend == "green_contexts":
            whole_device = torch.cuda.Stream(self.device)
        if not config.enforce_eager:
            graphs = GraphRunner(self.model, self.kv_cache, config.max_num_seqs, self.max_model_len)
            if self.device.type == "cuda":
                self.graph_capture = capture_partition_graphs(graphs, self.partitions,
                                                              self.semipd.max_graph_partitions, whole_device)
        pieces = piecewise_graphs(config, self.model, self.kv_cache)
        if pieces is not None and self.device.type == "cuda":
            self.piecewise_capture = capture_prefill_pieces(pieces, self.partitions)
        num_blocks = self.kv_cache.num_blocks
        self.allocator = BlockAllocator(num_blocks, config.block_size, int(num_blocks * config.kv_watermark))

        def stop_checker(req: Request, token: int | None) -> str | None:
            return req.payload.check_stop(token)

        self.prefill_scheduler = PrefillScheduler(
            PrefillSchedulerConfig(config.max_num_batched_tokens, config.max_num_seqs), self.allocator, stop_checker)
        self.scheduler = self.prefill_scheduler
        """The scheduler new requests wait in, as `Engine.scheduler` (``num_waiting``)."""
        self.decode_scheduler = DecodeScheduler(DecodeSchedulerConfig(config.max_num_seqs), self.allocator,
                                                self._on_preempt, stop_checker)
        self.metrics_collector = SemiPDMetricsCollector(window_size_seconds=config.metrics_window_seconds,
                                                        clock=clock)
        self._clock = self.metrics_collector.clock
        self.recorder = LifecycleRecorder(self.metrics_collector, delivery)
        self._book = RequestBook()
        self._seeds = random.Random(config.seed)
        self.num_preemptions = 0
        """Recompute preemptions so far (the decode worker sends the newest request back to prefill)."""
        self._add_lock = threading.Lock()
        ctx = WorkerContext(self.device, self.partitions, self._book, self.recorder, self._clock,
                            self._record_system_metrics)
        borrow = None
        if whole_device is not None:
            borrow = WholeDeviceBorrow(whole_device, WHOLE_DEVICE, lambda: not self.prefill_scheduler.has_work())
        self.decode_worker = DecodeWorker(ctx, self.decode_scheduler, ModelRunner(self.model, self.kv_cache, graphs),
                                          self._on_blocks_freed, borrow, overlap=config.async_scheduling)
        self.prefill_worker = PrefillWorker(ctx, self.prefill_scheduler,
                                            ModelRunner(self.model, self.kv_cache, pad_prefill=True,
                                                        piecewise=pieces),
                                            self.decode_worker.hand_off, self.semipd.prefill_launch_lookahead_layers)
        self.warm_up_seconds = 0.0
        if self.device.type == "cuda" and self.partitions.backend != "none":
            self.warm_up_seconds = warm_prefill_streams(
                self.prefill_worker.runner, self.prefill_worker.throttle, self.partitions, self.allocator,
                self.model_config.vocab_size, min(config.max_num_batched_tokens, self.max_model_len - 1),
                config.max_num_seqs)
        self.controller_mode = self.semipd.controller
        self.controller = self._build_controller()
        self.partitions.add_listener(self._on_reallocation)
        self._saved_switch_interval: float | None = None
        self._frozen = False
        self._start()

    # -- set-up -------------------------------------------------------------------------------
    def _build_controller(self) -> SLOAwareResourceController | None:
        """The SLO controller over the reachable splits (None when partitioning is off)."""
        if self.controller_mode == "off":
            return None
        c = self.semipd
        grid = self.partitions.grid
        reachable = self.partitions.reachable_prefill_sms
        lo, hi = 100.0 * reachable[0] / grid.total_sms, 100.0 * reachable[-1] / grid.total_sms
        bounds = CandidateBounds(min_prefill_percentage=lo, max_prefill_percentage=hi,
                                 min_decode_percentage=100.0 - hi, max_decode_percentage=100.0 - lo)
        options = None
        if parse_predictor_spec(c.predictor)[0] == "profile":  # forecast with this engine's limits
            options = {"max_prefill_tokens": self.config.max_num_batched_tokens,
                       "max_decode_batch": self.config.max_num_seqs,
                       "decode_borrows_idle_prefill": c.decode_borrows_idle_prefill}
        return SLOAwareResourceController(
            SLOConstraints(ttft_target_ms=c.slo_ttft_ms, tpot_target_ms=c.slo_tpot_ms), self.metrics_collector,
            self.partitions, monitoring_interval=c.monitoring_interval, predictor=c.predictor,
            cooldown_seconds=c.cooldown_seconds, candidate_bounds=bounds, predictor_options=options,
            prefer_prefill=c.decode_borrows_idle_prefill)

    def _start(self) -> None:
        # What start-up built (model, graphs, caches) lives as long as the engine: keep it out of
        # the cyclic collector's scans, so a full collection (which holds the GIL, and with it both
        # workers) walks only what serving allocates. `stop` unfreezes, so a stopped engine's
        # reference cycles can be collected again.
        gc.collect()
        gc.freeze()
        self._frozen = True
        interval = self.semipd.gil_switch_interval_s
        if interval is not None:
            self._saved_switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(interval)
        self.prefill_worker.start()
        self.decode_worker.start()
        if self.controller is not None and self.controller_mode == "slo":
            self.controller.start_monitoring()
        logger.info("semi-pd engine: %s, split %s (%d/%d SMs), controller %s", self.partitions.backend,
                    self.partitions.current_allocation(), *self._sms(), self.controller_mode)

    def stop(self) -> None:
        """Stop the controller and the workers (joined); requests still live stay unfinished."""
        if self.controller is not None and self.controller.running:
            self.controller.stop_monitoring()
        for worker in (self.prefill_worker, self.decode_worker):
            worker.stop()
        self.partitions.stop()
        if self._frozen:
            gc.unfreeze()
            self._frozen = False
        if self._saved_switch_interval is not None:
            sys.setswitchinterval(self._saved_switch_interval)
            self._saved_switch_interval = None

    # -- callbacks from the workers and the partition manager ----------------------------------
    def _on_preempt(self, request: Request) -> None:
        self.num_preemptions += 1
        self.prefill_scheduler.add_preempted(request)
        self.prefill_worker.wake()

    def _on_blocks_freed(self) -> None:
        if self.prefill_scheduler.has_work():
            self.prefill_worker.wake()

    def _on_reallocation(self, allocation: SMAllocation, accepted: bool) -> None:
        if accepted:
            self.prefill_worker.wake()
            self.decode_worker.wake()

    def _record_system_metrics(self) -> None:
        alloc = self.partitions.current_allocation() if self.controller_mode != "off" else None
        self.metrics_collector.record_system_metrics(self.num_running, self.num_waiting, self.allocator.usage,
                                                     alloc)

    def bind_exporter(self, exporter: Any) -> None:
        """Count reallocation requests in a `SemiPDPrometheusExporter`
        (``semipd:sm_reallocations_total{result}``); the allocation gauge follows the collector."""
        self.partitions.add_listener(lambda _alloc, accepted: exporter.record_reallocation(accepted))

    # -- requests -------------------------------------------------------------------------------
    def validate_request(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise ValueError if the request can never run (empty or too long prompt, bad token ids)."""
        check_request(prompt_token_ids, params, self.max_model_len, self.model_config.vocab_size)

    def add_request(self, rid: str, prompt_token_ids: list[int], params: SamplingParams,
                    arrival_time: float | None = None) -> None:
        """Queue a request that arrived at `arrival_time` (default: now); thread-safe. Raises
        ValueError for an invalid one or a duplicate live `rid`."""
        self.validate_request(prompt_token_ids, params)
        with self._add_lock:
            seed = params.seed if params.seed is not None else self._seeds.getrandbits(63)
        req = build_request(rid, prompt_token_ids, params, seed, eos_token_ids=self.eos_token_ids,
                            max_model_len=self.max_model_len,
                            arrival_time=self._clock.now() if arrival_time is None else arrival_time)
        check_fits(self.allocator, req)
        self._book.add(req)
        self.recorder.arrival(req)
        self.prefill_scheduler.add_request(req)
        self.prefill_worker.wake()

    def abort(self, rid: str) -> None:
        """Abort `rid` (thread-safe; no-op for an unknown id). No output follows; its blocks are
        freed by the worker holding it at that worker's next iteration boundary."""
        if self._book.abort(rid):
            self.recorder.aborted(rid)
            self.prefill_worker.wake()
            self.decode_worker.wake()

    def has_unfinished(self) -> bool:
        """Live requests, or aborted ones whose blocks are not freed yet."""
        return self._book.has_unfinished()

    @property
    def num_unfinished(self) -> int:
        return self._book.num_live

    @property
    def num_waiting(self) -> int:
        """Requests waiting for prefill."""
        return self.prefill_scheduler.num_waiting

    @property
    def num_running(self) -> int:
        """Requests holding KV blocks: partially prefilled, handed off, or decoding."""
        return (self.prefill_scheduler.num_running + self.decode_worker.num_inbox
                + self.decode_scheduler.num_waiting + self.decode_scheduler.num_running)

    def interrupt(self) -> None:
        """Thread-safe: a `step` waiting for outputs returns now (the caller has new input to apply)."""
        self._book.interrupt()

    def step(self) -> list[TokenDelta]:
        """The outputs the workers produced since the last call, waiting up to
        ``output_wait_s`` when there are none. A failed worker batch raises `StepError`
        naming its (aborted) requests; other outputs wait for the next call."""
        for worker in (self.prefill_worker, self.decode_worker):
            if not worker.is_alive() and not worker.stopping:
                raise RuntimeError(f"the semi-pd {worker.phase} worker is not running ({worker.last_error})")
        return self._book.take(self.semipd.output_wait_s)

    # -- allocation -------------------------------------------------------------------------------
    def set_allocation(self, prefill_percentage: float, decode_percentage: float) -> SMAllocation:
        """Apply a split by hand (``POST /semipd/allocation``) and switch the controller to
        static. The prefill share is rounded to the nearest pre-created split; decode gets the
        rest. Returns the split applied. ValueError when partitioning is off or the shares are invalid."""
        if self.controller_mode == "off":
            raise ValueError("the engine runs with controller 'off': there are no SM partitions to allocate")
        wanted = SMAllocation(prefill_percentage, decode_percentage)
        grid = self.partitions.grid
        target = wanted.prefill_percentage * grid.total_sms / 100.0
        sms = min(self.partitions.reachable_prefill_sms, key=lambda p: (abs(p - target), p))
        if self.controller is not None and self.controller.running:
            self.controller.stop_monitoring()
        self.controller_mode = "static"
        applied = grid.allocation(sms)
        self.partitions.request_sm_reallocation(applied)
        return applied

    # -- status -----------------------------------------------------------------------------------
    def _sms(self) -> tuple[int, int]:
        part = self.partitions.partitions()[self.partitions.grid.prefill_sms(self.partitions.current_allocation())]
        return part.prefill_sms, part.decode_sms

    @staticmethod
    def _worker_status(worker: Worker) -> dict[str, Any]:
        times = sorted(t for _, t in list(worker.timings))
        wall = time.perf_counter() - worker.started_at if worker.started_at is not None else 0.0
        busy = worker.busy_seconds
        return {"alive": worker.is_alive(), "iterations": worker.num_iterations, "errors": worker.num_errors,
                "last_error": worker.last_error,
                "iteration_ms_p50": 1000 * times[len(times) // 2] if times else None,
                "busy_fraction": round(busy / wall, 4) if wall > 0 else None,
                "device_wait_fraction_of_busy": round(worker.wait_seconds / busy, 4) if busy > 0 else None}

    def get_status(self) -> dict[str, Any]:
        """`Engine.get_status()`'s keys plus the allocation, the partitions (switch latency),
        the controller (status and recent decisions), the graphs and the workers."""
        cfg = self.config
        parts = self.partitions.get_status()
        prefill_sms, decode_sms = self._sms()
        alloc = self.partitions.current_allocation()
        controller: dict[str, Any] = {"mode": self.controller_mode}
        if self.controller is not None:
            controller.update(self.controller.get_controller_status())
        return {
            **engine_status(cfg, self.model, self.device, self.max_model_len, self.allocator),
            "allocation": {"prefill_sms": prefill_sms, "decode_sms": decode_sms,
                           "prefill_percentage": alloc.prefill_percentage,
                           "decode_percentage": alloc.decode_percentage,
                           "backend": parts["backend"], "sm_limited": parts["sm_limited"]},
            "partitions": parts,
            "controller": controller,
            "num_running": self.num_running,
            "num_waiting": self.num_waiting,
            "num_unfinished": self.num_unfinished,
            "num_preemptions": self.num_preemptions,
            "cuda_graphs": None if self.graph_capture is None else {
                **self.graph_capture.as_dict(), "buckets": self.decode_worker.runner.graph_runner.buckets},
            "piecewise_graphs": None if self.piecewise_capture is None else {
                **self.piecewise_capture.as_dict(), "buckets": self.prefill_worker.runner.piecewise.buckets},
            "workers": {"prefill": self._worker_status(self.prefill_worker),
                        "decode": {**self._worker_status(self.decode_worker),
                                   "graph_steps": self.decode_worker.num_graph_steps,
                                   "borrowed_steps": self.decode_worker.num_borrowed_steps,
                                   "eager_steps": self.decode_worker.num_eager_steps}},
            "gil_switch_interval_s": sys.getswitchinterval(),
        }
