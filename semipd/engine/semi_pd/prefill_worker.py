"""`PrefillWorker`: the Semi-PD thread that runs prefill batches on the prefill partition and
hands prefilled requests to decode (see `semipd.engine.semi_pd.workers` for the loop and the switch
protocol it shares with the decode worker)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from semipd.engine.runtime.model_runner import ModelRunner
from semipd.engine.semi_pd.workers import LaunchThrottle, Worker, WorkerContext
from semipd.sched import PrefillScheduler, Request


class PrefillWorker(Worker):
    """Runs prefill batches (chunked, FCFS) and hands prefilled requests to decode."""

    phase = "prefill"

    def __init__(self, ctx: WorkerContext, scheduler: PrefillScheduler, runner: ModelRunner,
                 hand_off: Callable[[Request, Any], None], lookahead_layers: int = 2) -> None:
        super().__init__(ctx)
        self.scheduler = scheduler
        self.runner = runner
        self.hand_off = hand_off
        self.throttle = LaunchThrottle(lookahead_layers)

    def _layer_boundary(self, layer: int) -> int:
        """Between two decoder layers: end the launch stretch, let the GPU catch up to within
        the lookahead, and begin the next stretch (on a new stream after a switch). Returns the
        graph key of the partition it launches on now."""
        pm = self.ctx.partitions
        pm.end_launch(self.phase)
        self.throttle.mark(self.stream)
        part = pm.begin_launch(self.phase)
        self._move(part)
        return part.prefill_sms

    def iteration(self) -> bool:
        ctx = self.ctx
        if ctx.book.has_pending_aborts():
            self.apply_aborts(self.scheduler.abort)
        batch = self.scheduler.schedule()
        if batch.is_empty:
            return False
        self.num_iterations += 1
        t0 = ctx.clock.now()
        ctx.recorder.prefill_started((chunk.request for chunk in batch.prefills), t0)
        try:
            host = self.runner.host_batch(batch)  # host-only work stays outside the launch stretch
            with self.launch_stretch() as part:
                pending = self.runner.launch(batch, graph_key=part.prefill_sms, layer_hook=self._layer_boundary,
                                             host=host)
                event = None
                if self.stream is not None:
                    event = torch.cuda.Event()
                    event.record(self.stream)
            tokens = self.wait_tokens(pending)
            handoffs = self.scheduler.update(batch, tokens)
        except Exception as exc:
            self.batch_failed(batch, exc, self.scheduler.abort)
            return True
        finally:
            self.throttle.reset()
        t1 = ctx.clock.now()
        self.timings.append((batch.num_prefill_tokens, t1 - t0))
        self.publish(batch.sampled_requests(), t1)
        for req in handoffs:
            self.hand_off(req, event)
        ctx.record_system_metrics()
        return True
