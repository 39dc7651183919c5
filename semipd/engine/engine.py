"""`Engine`: the real engine's synchronous core. One `step()` is one scheduler iteration:

    schedule (UnifiedScheduler: decodes first, then chunked prefill)  ->  ModelRunner.run
    ->  scheduler.update (appends tokens; stop hook: EOS, stop token ids, length)
    ->  TokenDelta per request that got a token, metrics

Engines deal in token ids only: text and stop strings are the caller's (`OutputProcessor`).
The engine is not thread-safe: one thread calls `add_request`, `step` and `abort`
(`AsyncEngine` or the engine-core loop is that thread). A `LifecycleRecorder` records the
seed's lifecycle events into the `SemiPDMetricsCollector`: arrival (add_request), prefill
start (first chunk scheduled), prefill end (first token sampled), decode start, and, when the
engine is what clients see (``delivery``), first token, later tokens and the end; plus
system metrics each step.
"""

from __future__ import annotations

import logging
import random
from typing import Any, NoReturn

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
from semipd.engine.errors import StepError
from semipd.engine.runtime.cuda_graphs import GraphRunner
from semipd.engine.runtime.model_runner import ModelRunner, PendingTokens
from semipd.engine.runtime.warm_up import warm_up_unified
from semipd.engine.sampling_params import SamplingParams
from semipd.metrics import SemiPDMetricsCollector
from semipd.metrics.recorder import LifecycleRecorder
from semipd.sched import BlockAllocator, Request, UnifiedScheduler, UnifiedSchedulerConfig
from semipd.sched.batch import AdvancedBatch, Batch

logger = logging.getLogger(__name__)


class Engine:
    """Loads the model, sizes the KV cache, and runs scheduler iterations on it."""

    def __init__(self, config: EngineConfig, clock: Clock | None = None, delivery: bool = True) -> None:
        if config.mode != "unified":
            raise ValueError(f"Engine runs mode 'unified'; build mode {config.mode!r} with create_engine(config)")
        self.config = config
        self.device = resolve_device(config.device)
        self.model_name = config.model
        self.model, self.max_model_len, self.tokenizer, self.eos_token_ids = load_engine_model(config, self.device)
        self.model_config = self.model.config
        self.kv_cache = allocate_kv_cache(config, self.model, self.device, self.max_model_len)
        self.graph_runner: GraphRunner | None = None
        if not config.enforce_eager:
            self.graph_runner = GraphRunner(self.model, self.kv_cache, config.max_num_seqs, self.max_model_len)
            if self.device.type == "cuda":
                self.graph_runner.capture()
        self.piecewise = piecewise_graphs(config, self.model, self.kv_cache)
        if self.piecewise is not None and self.device.type == "cuda":
            self.piecewise.capture()
        self.runner = ModelRunner(self.model, self.kv_cache, self.graph_runner, piecewise=self.piecewise)
        self.warm_up_seconds = 0.0
        if self.device.type == "cuda":  # compile the kernel variants serving needs before it starts
            self.warm_up_seconds, n = warm_up_unified(
                self.runner, BlockAllocator(self.kv_cache.num_blocks, config.block_size), self.model_config.vocab_size,
                min(config.max_num_batched_tokens, self.max_model_len - 1), config.max_num_seqs, self.max_model_len)
            logger.info("warm-up: %d batches in %.1f s", n, self.warm_up_seconds)
        num_blocks = self.kv_cache.num_blocks
        self.allocator = BlockAllocator(num_blocks, config.block_size, int(num_blocks * config.kv_watermark))
        self.scheduler = UnifiedScheduler(
            UnifiedSchedulerConfig(config.max_num_batched_tokens, config.max_num_seqs), self.allocator,
            stop_checker=lambda req, token: req.payload.check_stop(token))
        self.metrics_collector = SemiPDMetricsCollector(window_size_seconds=config.metrics_window_seconds,
                                                        clock=clock)
        self._clock = self.metrics_collector.clock
        self.recorder = LifecycleRecorder(self.metrics_collector, delivery)
        self._requests: dict[str, Request] = {}
        self._seeds = random.Random(config.seed)
        self.num_steps = 0
        self._finished_preemptions = 0
        self._in_flight: tuple[AdvancedBatch, PendingTokens] | None = None
        """The launched step whose tokens are not read yet (async scheduling)."""
        self._carried: list[TokenDelta] = []
        """Deltas read before a failed step raised, returned by the next call."""

    # -- requests -------------------------------------------------------------------------
    def validate_request(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise ValueError if the request can never run (empty or too long prompt, bad token ids)."""
        check_request(prompt_token_ids, params, self.max_model_len, self.model_config.vocab_size)

    def add_request(self, rid: str, prompt_token_ids: list[int], params: SamplingParams,
                    arrival_time: float | None = None) -> None:
        """Queue a request that arrived at `arrival_time` (default: now). Raises ValueError for an
        invalid one or a duplicate live `rid`."""
        if rid in self._requests:
            raise ValueError(f"request id {rid!r} is already running")
        self.validate_request(prompt_token_ids, params)
        seed = params.seed if params.seed is not None else self._seeds.getrandbits(63)
        req = build_request(rid, prompt_token_ids, params, seed, eos_token_ids=self.eos_token_ids,
                            max_model_len=self.max_model_len,
                            arrival_time=self._clock.now() if arrival_time is None else arrival_time)
        self.scheduler.add_request(req)
        self._requests[rid] = req
        self.recorder.arrival(req)

    def abort(self, rid: str) -> None:
        """Drop request `rid` wherever it is and free its KV blocks (no-op for an unknown id)."""
        req = self._requests.pop(rid, None)
        if req is None:
            return
        self.scheduler.abort(rid)
        self.recorder.aborted(rid)

    def has_unfinished(self) -> bool:
        """Live requests (a finished one stays live until its last token is read). A launched step whose
        requests were all aborted needs no more calls: the next one reads and drops its tokens."""
        return bool(self._requests)

    @property
    def num_unfinished(self) -> int:
        return len(self._requests)

    @property
    def num_preemptions(self) -> int:
        """Recompute preemptions so far, over finished and running requests."""
        return self._finished_preemptions + sum(r.num_preemptions for r in self._requests.values())

    # -- iterations -----------------------------------------------------------------------
    def step(self) -> list[TokenDelta]:
        """Run one iteration; returns a delta for every request that got a token.

        With ``async_scheduling`` (the default) an iteration schedules and launches step N+1, then
        reads step N's tokens and returns their deltas (see `UnifiedScheduler.advance`): the host
        prepares the next step while the device runs the last one. If a step fails, the requests of
        its batch are aborted (blocks freed) and `StepError` naming them is raised; other requests
        carry on at the next call, and no delta is lost."""
        if not self.config.async_scheduling:
            return self._step_sync()
        deltas, self._carried = self._carried, []
        batch = self.scheduler.schedule()
        pending: PendingTokens | None = None
        failure: tuple[Batch, Exception] | None = None
        if not batch.is_empty:
            self._start(batch)
            try:
                pending = self.runner.launch(batch, previous=self._in_flight[1] if self._in_flight else None)
            except Exception as exc:
                failure = (batch, exc)
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            advanced, tokens = in_flight
            try:
                got = self.scheduler.resolve(advanced, tokens.wait())
            except Exception as exc:
                if pending is not None:  # the next batch reads this one's tokens: it cannot stand alone
                    self._in_flight = (self.scheduler.advance(batch), pending)
                self._carried = deltas
                self._raise_failed(advanced.batch, exc)
            deltas += self._emit(got)
        if failure is not None:
            self._carried = deltas
            self._raise_failed(*failure)
        if pending is not None:
            self._in_flight = (self.scheduler.advance(batch), pending)
        return deltas

    def _step_sync(self) -> list[TokenDelta]:
        """One step at a time: schedule, run and wait, update."""
        batch = self.scheduler.schedule()
        if batch.is_empty:
            return []
        self._start(batch)
        try:
            tokens = self.runner.run(batch)
            self.scheduler.update(batch, tokens)
        except Exception as exc:
            self._raise_failed(batch, exc)
        return self._emit(batch.sampled_requests())

    def _start(self, batch: Batch) -> None:
        self.num_steps += 1
        t = self._clock.now()
        self.recorder.prefill_started((chunk.request for chunk in batch.prefills), t)
        self.recorder.decode_started(batch.decodes, t)

    def _emit(self, sampled: list[Request]) -> list[TokenDelta]:
        """Deltas and lifecycle events of the requests that just got a token (aborted ones are skipped);
        finished ones leave the engine."""
        t = self._clock.now()
        live = [req for req in sampled if req.rid in self._requests]
        deltas = [req.payload.take_delta(req) for req in live]
        self.recorder.sampled(live, t)
        for req in live:
            if req.is_finished:
                del self._requests[req.rid]
                self._finished_preemptions += req.num_preemptions
        self.metrics_collector.record_system_metrics(self.scheduler.num_running, self.scheduler.num_waiting,
                                                     self.allocator.usage, timestamp=t)
        return deltas

    def _raise_failed(self, batch: Batch, exc: Exception) -> NoReturn:
        rids = self._fail_batch(batch)
        raise StepError(rids, f"step {self.num_steps} failed ({type(exc).__name__}: {exc}); "
                              f"aborted {len(rids)} requests") from exc

    def _fail_batch(self, batch: Batch) -> list[str]:
        rids = list(dict.fromkeys([c.request.rid for c in batch.prefills] + [r.rid for r in batch.decodes]))
        logger.exception("engine step failed; aborting requests %s", rids)
        for rid in rids:
            self.abort(rid)
        return rids

    def stop(self) -> None:
        """Nothing runs in the background of a unified engine: there is nothing to stop."""

    def interrupt(self) -> None:
        """A unified `step` never waits for outputs: nothing to interrupt."""

    # -- status ---------------------------------------------------------------------------
    def get_status(self) -> dict[str, Any]:
        """Mode, model, device, KV usage, queue counts, limits, CUDA graphs."""
        cfg = self.config
        gr, pw = self.graph_runner, self.piecewise
        return {
            **engine_status(cfg, self.model, self.device, self.max_model_len, self.allocator),
            "allocation": None,  # unified mode: both phases share every SM
            "num_running": self.scheduler.num_running,
            "num_waiting": self.scheduler.num_waiting,
            "num_unfinished": self.num_unfinished,
            "num_steps": self.num_steps,
            "num_preemptions": self.num_preemptions,
            "warm_up_seconds": round(self.warm_up_seconds, 3),
            "cuda_graphs": None if gr is None else {
                "captured": bool(gr.keys), "buckets": gr.buckets, "capture_seconds": round(gr.capture_seconds, 3)},
            "piecewise_graphs": None if pw is None else {
                "captured": pw.is_captured(), "buckets": pw.buckets, "capture_seconds": round(pw.capture_seconds, 3)},
        }
