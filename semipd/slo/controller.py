"""`SLOAwareResourceController`: the monitoring loop around the SLO algorithm (the seed's section 3).

Each cycle (`step`) reads the resource manager's status (current split and, when it has
one, its `SMGrid`), reads the metrics window, and either holds, keeps or asks for a new
split. `start_monitoring` runs cycles every ``monitoring_interval`` seconds on a daemon
thread; the simulator calls `step(now)` itself on virtual time.

Stale samples after a move. A window read right after a reallocation still holds
samples produced under the previous split; acting on it would judge the new split by
the old one's latencies and overcorrect. After a successful reallocation the controller
therefore holds (does not evaluate, and does not teach the predictor) until
``cooldown_seconds`` have passed, and while the resource manager reports the switch still
pending (``switch_pending_for`` in its status). Then:

- A metrics source whose ``get_current_window_metrics`` takes ``since`` (the collector does)
  is read through a `WindowReader` (`semipd.slo.window_reader`): the window since the switch
  took effect, or since the load last shifted, so every sample is of the current split and
  load. The controller evaluates it (and the predictor learns from it) as soon as it holds
  ``min_samples`` samples of each SLO, or a whole window has passed. Together with streaming
  TPOT (`semipd.slo.observation`) this answers a move in a cooldown instead of a window, and
  a load change within ``2 x monitoring_interval``.
- Any other source: with ``settle_on_window`` (default) the controller waits until a whole
  window - its length as the metrics report it, ``window_end_time - window_start_time`` -
  has passed. Durations are compared, not timestamps, so the collector may run on another
  clock. One exception (``escalate``, default on): once the cooldown is over, if every SLO
  that was violated at the last move now misses by a ratio larger by ``min_improvement``
  (relative; smaller changes count as noise), the move is not helping - it was too small,
  or the load is still growing - and the controller acts again at once instead of waiting
  out the window. A window mixing the old and the new split improves as soon as the new
  split is better, so a move that is taking effect is not escalated. Windows that still
  mix splits never teach the predictor.

What a cycle moves to (`semipd.slo.algorithm`): the split with the highest predicted share
of requests meeting both SLOs; only toward the phase whose SLO alone is missed; with an SLO
violated (above ``threshold x target``, the seed's 1.1) on any predicted gain, otherwise
(misses within the threshold, or both SLOs met) only on a gain of ``min_attainment_gain``:
the band between target and threshold is hysteresis, and a split that keeps losing a few
percent of its requests just under the threshold is still left when a better one is predicted.

Predictions, checked. Each evaluated cycle records its prediction for the split it leaves in
force (`Decision.prediction`), and the first later cycle whose window holds only samples of
that split records what it read (`Decision.outcome`, through a `PredictionLedger`); the
running errors are in `get_controller_status()` under ``prediction_accuracy``.

Reversal memory (`semipd.slo.reversal_memory`). For ``reversal_memory_seconds`` (None: off)
the controller moves only strictly between the latest split that violated TTFT alone and the
latest that violated TPOT alone, as long as the load is the one they failed under, so that a
poor predictor closes in on a compliant split instead of swinging across the range.

Faults. A metrics source or status call that raises, an algorithm error, and a
reallocation request that returns False or raises are each logged, counted and recorded
as a decision; the allocation stays as it was and the loop goes on.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, Protocol

from semipd.allocation import ResourceManager, SMAllocation, SMGrid
from semipd.clock import Clock, RealClock
from semipd.metrics.aggregated import AggregatedMetrics
from semipd.slo.algorithm import Evaluation, SLOAlgorithm
from semipd.slo.candidates import CandidateBounds
from semipd.slo.constraints import SLOConstraints
from semipd.slo.decision import Decision, format_split
from semipd.slo.prediction_check import PredictionLedger, prediction_of
from semipd.slo.predictors import Predictor
from semipd.slo.reversal_memory import ReversalMemory
from semipd.slo.window_reader import WindowReader

logger = logging.getLogger(__name__)


class MetricsSource(Protocol):
    """Anything that returns the current window (a `SemiPDMetricsCollector`, a fake). A source
    whose method also takes ``since`` (clock seconds: the window starts no earlier) lets the
    controller judge a new split by its own samples as soon as there are enough of them."""

    def get_current_window_metrics(self) -> AggregatedMetrics: ...


class SLOAwareResourceController:
    """Moves SMs between prefill and decode to keep TTFT and TPOT within their SLOs.

    `process_rotation_manager` is any `ResourceManager`. `predictor` is a registered
    predictor spec (``paper``, ``profile:FILE``, ...) or a `Predictor`; `predictor_options`
    go to its constructor. `min_samples` TTFT (resp. TPOT) samples are needed in the window
    before that SLO is judged. `clock` (default `RealClock`) times cycles and cooldowns.
    `settle_on_window` and `escalate` govern the wait after a move with a source that cannot
    give a window since a time, `shift_ratio` the load-shift detection with one that can (None:
    off; see `semipd.slo.window_reader`), and `reversal_memory_seconds` (None: off) the range
    moves stay in (see the module docstring). The last `decision_log_size` decisions are kept.
    `candidate_bounds`, `queue_min_waiting`, `min_improvement`, `monotone_moves`,
    `min_attainment_gain`, `prefer_prefill`, `park_margin`, `rebalance_above` (None: no
    anticipation) and `rebalance_gain` configure the `SLOAlgorithm` (``controller.slo_algorithm``).
    """

    def __init__(self, slo_constraints: SLOConstraints, metrics_collector: MetricsSource,
                 process_rotation_manager: ResourceManager, monitoring_interval: float = 10.0,
                 predictor: str | Predictor = "heuristic", cooldown_seconds: float = 10.0, min_samples: int = 10,
                 clock: Clock | None = None, decision_log_size: int = 100, settle_on_window: bool = True,
                 candidate_bounds: CandidateBounds | None = None, queue_min_waiting: int | None = 8,
                 min_improvement: float = 0.05, predictor_options: dict[str, Any] | None = None,
                 monotone_moves: bool = True, escalate: bool = True, min_attainment_gain: float = 0.02,
                 reversal_memory_seconds: float | None = 60.0, shift_ratio: float | None = 2.0,
                 prefer_prefill: bool = True, park_margin: float = 0.8, rebalance_above: float | None = 0.8,
                 rebalance_gain: float = 0.25) -> None:
        if not (isinstance(monitoring_interval, (int, float)) and monitoring_interval > 0):
            raise ValueError(f"monitoring_interval must be > 0, got {monitoring_interval!r}")
        if not (isinstance(cooldown_seconds, (int, float)) and cooldown_seconds >= 0):
            raise ValueError(f"cooldown_seconds must be >= 0, got {cooldown_seconds!r}")
        if reversal_memory_seconds is not None and not (isinstance(reversal_memory_seconds, (int, float))
                                                        and reversal_memory_seconds >= 0):
            raise ValueError(f"reversal_memory_seconds must be None or >= 0, got {reversal_memory_seconds!r}")
        if isinstance(decision_log_size, bool) or not isinstance(decision_log_size, int) or decision_log_size < 1:
            raise ValueError(f"decision_log_size must be an integer >= 1, got {decision_log_size!r}")
        self.slo_constraints = slo_constraints
        self.metrics_collector = metrics_collector
        self.process_rotation_manager = process_rotation_manager
        self.monitoring_interval = float(monitoring_interval)
        self.cooldown_seconds = float(cooldown_seconds)
        self.settle_on_window = settle_on_window
        self.escalate = escalate
        self.reversal_memory_seconds = None if reversal_memory_seconds is None else float(reversal_memory_seconds)
        self.clock: Clock = clock or RealClock()
        self.slo_algorithm = SLOAlgorithm(slo_constraints, predictor, candidate_bounds, min_samples,
                                          queue_min_waiting, min_improvement, predictor_options, monotone_moves,
                                          min_attainment_gain, prefer_prefill, park_margin, rebalance_above,
                                          rebalance_gain)
        self._reader = WindowReader(metrics_collector, 2.0 * self.monitoring_interval, shift_ratio, min_samples)
        self._memory = None if reversal_memory_seconds is None else ReversalMemory(
            reversal_memory_seconds, shift_ratio or 2.0)
        self._decisions: deque[Decision] = deque(maxlen=decision_log_size)
        self._stats = dict.fromkeys(("total_decisions", "total_adjustments", "successful_adjustments",
                                     "failed_adjustments", "errors", "status_errors", "metrics_errors",
                                     "algorithm_errors", "reallocation_errors"), 0)
        self._last_adjustment_time: float | None = None
        self._last_adjustment_violations: dict[str, float] = {}
        self._first_cycle: float | None = None
        self._ledger = PredictionLedger()
        self._current_allocation: SMAllocation | None = None
        self._step_lock = threading.Lock()  # one cycle at a time
        self._state_lock = threading.Lock()  # stats and log, held briefly
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- loop ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start_monitoring(self) -> None:
        """Run `step` every ``monitoring_interval`` seconds on a daemon thread (no-op if running)."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._monitoring_loop, name="semipd-slo-controller", daemon=True)
        self._thread.start()
        logger.info("SLO controller started (interval %.3gs, predictor %s)", self.monitoring_interval,
                    self.slo_algorithm.predictor.name)

    def stop_monitoring(self) -> None:
        """Stop the loop; returns within one interval (plus a cycle in progress)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.monitoring_interval)
        self._thread = None
        logger.info("SLO controller stopped")

    def _monitoring_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # step records its own faults; this guards the clock and the log
                logger.exception("SLO controller cycle failed")
                with self._state_lock:
                    self._stats["errors"] += 1
            self._stop.wait(self.monitoring_interval)

    # -- one cycle ------------------------------------------------------------------------------

    def step(self, now: float | None = None) -> Decision:
        """Run one cycle at `now` (default: the clock) and return its decision."""
        with self._step_lock:
            now = self.clock.now() if now is None else float(now)
            decision = self._decide(now)
            with self._state_lock:
                self._stats["total_decisions"] += 1
                self._decisions.append(decision)
                self._ledger.expect(decision)
            return decision

    def _fault(self, now: float, kind: str, what: str, exc: BaseException,
               allocation: SMAllocation | None = None) -> Decision:
        logger.warning("SLO controller: %s failed: %r", what, exc, exc_info=exc)
        with self._state_lock:
            self._stats["errors"] += 1
            self._stats[f"{kind}_errors"] += 1
        return Decision(now, "error", f"{what} failed", allocation=allocation, error=repr(exc))

    def _decide(self, now: float) -> Decision:
        try:
            status = self.process_rotation_manager.get_status()
            current = status["current_sm_allocation"]
            allocation = SMAllocation(current["prefill_percentage"], current["decode_percentage"])
            grid = SMGrid(**status["sm_grid"]) if status.get("sm_grid") else None
            pending = bool(status.get("switch_pending_for"))
        except Exception as exc:
            return self._fault(now, "status", "reading the resource manager's status", exc)
        self._current_allocation = allocation
        if pending and self._last_adjustment_time is not None:
            self._reader.mark_switch(now)  # the split is not in force yet: its samples start later
        try:
            metrics = self._reader.read(now)
        except Exception as exc:
            return self._fault(now, "metrics", "reading the metrics window", exc, allocation)

        algorithm = self.slo_algorithm
        try:
            observation = algorithm.observe(metrics, allocation)
            ratios = algorithm.slo_ratios(observation)
            violations = algorithm.violated(ratios)
            hold_reason, settled = self._settling(now, metrics, violations, pending)
            if hold_reason is not None:
                return Decision(now, "hold", hold_reason, allocation, observation.summary(), violations)
            step = 0.0 if grid is None else 100.0 * grid.granularity / grid.total_sms
            prefill_range = (0.0, 100.0) if self._memory is None else self._memory.update(
                now, observation, ratios, violations, step)
            evaluation = algorithm.decide(observation, grid, learn=settled, prefill_range=prefill_range,
                                          park=self._steady(now, metrics))
        except Exception as exc:
            return self._fault(now, "algorithm", "evaluating the window", exc, allocation)
        if settled and evaluation.attainment is not None:
            self._check_prediction(now, allocation, evaluation)

        record = dict(allocation=allocation, observed=observation.summary(), violations=violations,
                      current=evaluation.current, candidates=evaluation.candidates)
        choice = evaluation.choice
        chosen = evaluation.current if choice is None else next(
            (c for c in evaluation.candidates if c.allocation == choice), None)
        if chosen is not None:
            record["prediction"] = prediction_of(chosen)
        if choice is None:
            logger.debug("SLO controller: keep %s (%s)", format_split(allocation), evaluation.reason)
            return Decision(now, "keep", evaluation.reason, **record)
        reason = evaluation.reason
        if not settled:
            reason = f"escalating, the last move is not helping yet; {reason}"
        return self._reallocate(now, choice, reason, violations, record)

    def _steady(self, now: float, metrics: AggregatedMetrics) -> bool:
        """Whether the split and the load have stood for a whole window (since the first cycle, the last
        move and the last load shift): parking spare SMs with prefill waits for that much evidence."""
        if self._first_cycle is None:
            self._first_cycle = now
        since = max(t for t in (self._first_cycle, self._last_adjustment_time, self._reader.shift_at) if t is not None)
        return now - since >= metrics.window_end_time - metrics.window_start_time

    def _check_prediction(self, now: float, allocation: SMAllocation, evaluation: Evaluation) -> None:
        """Fill in the outcome of the decision waiting for a window of `allocation` alone."""
        with self._state_lock:
            checked = self._ledger.check(now, allocation, evaluation.observation, evaluation.attainment)
            if checked is None:
                return
            old, new = checked
            for i in range(len(self._decisions) - 1, -1, -1):
                if self._decisions[i] is old:
                    self._decisions[i] = new
                    break
        outcome = new.outcome or {}
        log = logger.info if old.action == "adjust" else logger.debug
        log("SLO controller: %s predicted TTFT %s / TPOT %s ms, attainment %.3f; observed %.4g / %.4g ms, %.3f",
            old.label, _fmt(old.prediction["ttft_ms"] if old.prediction else None),
            _fmt(old.prediction["tpot_ms"] if old.prediction else None),
            (old.prediction or {}).get("attainment") or 0.0, outcome.get("ttft_ms", 0.0),
            outcome.get("tpot_ms", 0.0), outcome.get("attainment", 0.0))

    def _settling(self, now: float, metrics: AggregatedMetrics, violations: dict[str, float],
                  pending: bool) -> tuple[str | None, bool]:
        """(why to hold or None, whether the window holds only samples of the current split)."""
        if self._last_adjustment_time is not None:
            elapsed = now - self._last_adjustment_time
            if elapsed < self.cooldown_seconds:
                return f"cooldown: {elapsed:.3g}s since the last adjustment (< {self.cooldown_seconds:.3g}s)", False
            if pending:
                return "the last adjustment is still being applied", False
        reader = self._reader
        if reader.supports_since:
            if reader.fresh_from is None:
                return None, True
            needed = self.slo_algorithm.min_samples
            counts = (metrics.num_ttft_samples, max(metrics.num_tpot_samples, metrics.num_streaming_tpot_samples))
            if min(counts) >= needed:
                return None, True
            since = "the load shift" if reader.fresh_from == reader.shift_at else "the last adjustment"
            return (f"settling: {counts[0]} TTFT and {counts[1]} TPOT samples since {since} "
                    f"({now - reader.fresh_from:.3g}s ago; {needed} needed)"), False
        if self._last_adjustment_time is None:
            return None, True
        elapsed = now - self._last_adjustment_time
        window = metrics.window_end_time - metrics.window_start_time
        if not self.settle_on_window or elapsed >= window:
            return None, True
        grown = 1.0 + self.slo_algorithm.min_improvement
        before = self._last_adjustment_violations
        if self.escalate and all(violations.get(slo, 0.0) >= ratio * grown for slo, ratio in before.items()):
            return None, False
        return (f"settling: the {window:.3g}s window still holds samples from before the last adjustment "
                f"({elapsed:.3g}s ago)"), False

    def _reallocate(self, now: float, choice: SMAllocation, reason: str, violations: dict[str, float],
                    record: dict[str, Any]) -> Decision:
        error = None
        try:
            success = bool(self.process_rotation_manager.request_sm_reallocation(choice))
        except Exception as exc:
            logger.warning("SLO controller: reallocation to %s raised: %r", choice, exc, exc_info=exc)
            success, error = False, repr(exc)
        with self._state_lock:
            self._stats["total_adjustments"] += 1
            self._stats["successful_adjustments" if success else "failed_adjustments"] += 1
            if error is not None:
                self._stats["errors"] += 1
                self._stats["reallocation_errors"] += 1
        if success:
            logger.info("SLO controller: %s -> %s (%s)", format_split(record["allocation"]), format_split(choice),
                        reason)
            self._last_adjustment_time = now
            self._reader.mark_switch(now)
            self._last_adjustment_violations = dict(violations)
            self._current_allocation = choice
        else:
            logger.warning("SLO controller: reallocation %s -> %s refused%s", format_split(record["allocation"]),
                           format_split(choice), "" if error is None else f" ({error})")
            reason = f"{reason}; the resource manager {'raised' if error else 'refused'}"
        return Decision(now, "adjust", reason, choice=choice, success=success, error=error, **record)

    # -- introspection ------------------------------------------------------------------------

    def get_recent_decisions(self, n: int | None = None) -> list[Decision]:
        """The last `n` decisions (all kept ones by default), oldest first."""
        with self._state_lock:
            decisions = list(self._decisions)
        return decisions if n is None else decisions[-n:] if n > 0 else []

    def get_controller_status(self, num_decisions: int = 10) -> dict[str, Any]:
        """The seed's status dict: ``running``, ``current_allocation``, ``slo_constraints``,
        ``statistics`` (counts and ``success_rate``: successful / total adjustments, 0.0
        before any) and ``recent_decisions`` (the last `num_decisions`, as dicts, each with its
        ``prediction`` and, once checked, its ``outcome``); also ``predictor``,
        ``monitoring_interval``, ``cooldown_seconds``, ``last_adjustment_time``,
        ``last_load_shift_time`` (controller clock seconds, None before any) and
        ``prediction_accuracy`` (`PredictionLedger.summary`: how far checked predictions were off)."""
        with self._state_lock:
            stats: dict[str, Any] = dict(self._stats)
            accuracy = self._ledger.summary()
        total = stats["total_adjustments"]
        stats["success_rate"] = stats["successful_adjustments"] / total if total else 0.0
        allocation = self._current_allocation
        return {
            "running": self.running,
            "current_allocation": None if allocation is None else allocation.as_dict(),
            "slo_constraints": self.slo_constraints.as_dict(),
            "predictor": self.slo_algorithm.predictor.describe(),
            "monitoring_interval": self.monitoring_interval,
            "cooldown_seconds": self.cooldown_seconds,
            "last_adjustment_time": self._last_adjustment_time,
            "last_load_shift_time": self._reader.shift_at,
            "statistics": stats,
            "prediction_accuracy": accuracy,
            "recent_decisions": [d.as_dict() for d in self.get_recent_decisions(num_decisions)],
        }


def _fmt(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.4g}"
