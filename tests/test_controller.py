"""SLOAwareResourceController: cycles, cooldown, statistics, decision log, faults, the thread."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time

import numpy as np
import pytest

from semipd.allocation import InMemoryResourceManager, SMAllocation, SMGrid
from semipd.clock import VirtualClock
from semipd.metrics.aggregated import AggregatedMetrics
from semipd.slo import CandidateBounds, SLOAwareResourceController, SLOConstraints
from semipd.slo.decision import format_split


class FakeMetrics:
    """Returns the window it is given; raises while `fail` is set."""

    def __init__(self, metrics: AggregatedMetrics) -> None:
        self.metrics = metrics
        self.fail = False
        self.calls = 0

    def get_current_window_metrics(self) -> AggregatedMetrics:
        self.calls += 1
        if self.fail:
            raise RuntimeError("metrics source down")
        return self.metrics


class FlakyManager(InMemoryResourceManager):
    """Refuses (``mode="refuse"``) or raises (``mode="raise"``) reallocations; status can raise too."""

    def __init__(self, *args: object, mode: str = "ok", **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.mode = mode
        self.status_fails = False

    def get_status(self) -> dict:
        if self.status_fails:
            raise ConnectionError("manager unreachable")
        return super().get_status()

    def request_sm_reallocation(self, new_allocation: SMAllocation) -> bool:
        if self.mode == "refuse":
            return False
        if self.mode == "raise":
            raise RuntimeError("rotation failed")
        return super().request_sm_reallocation(new_allocation)


def window(ttft: float = 50.0, tpot: float = 20.0, n: int = 20, span: float = 30.0) -> AggregatedMetrics:
    return AggregatedMetrics(window_start_time=0.0, window_end_time=span, request_throughput=10.0,
                             request_arrival_rate=10.0, ttft_samples=np.full(n, ttft), tpot_samples=np.full(n, tpot))


TPOT_BAD = window(ttft=40.0, tpot=90.0)  # decode starved
START = SMAllocation(70, 30)
ONE_STEP = CandidateBounds(max_steps=1)  # moves of 10%, so that a second move has room


def controller(metrics: AggregatedMetrics = TPOT_BAD, manager: InMemoryResourceManager | None = None,
               **kwargs: object) -> tuple[SLOAwareResourceController, FakeMetrics, InMemoryResourceManager]:
    source = FakeMetrics(metrics)
    manager = manager or InMemoryResourceManager(START)
    kwargs.setdefault("clock", VirtualClock())
    ctrl = SLOAwareResourceController(SLOConstraints(), source, manager, **kwargs)  # type: ignore[arg-type]
    return ctrl, source, manager


def test_status_before_any_cycle() -> None:
    ctrl, _, _ = controller()
    status = ctrl.get_controller_status()
    assert status["running"] is False
    assert status["slo_constraints"] == SLOConstraints().as_dict()
    stats = status["statistics"]
    for key in ("total_adjustments", "successful_adjustments", "failed_adjustments", "total_decisions", "errors"):
        assert stats[key] == 0
    assert stats["success_rate"] == 0.0
    assert status["recent_decisions"] == []
    assert ctrl.slo_algorithm.predictor.name == "heuristic"


def test_violation_adjusts_and_is_recorded() -> None:
    ctrl, _, manager = controller()
    decision = ctrl.step(now=100.0)
    assert decision.action == "adjust" and decision.success is True
    assert decision.time == 100.0 and decision.allocation == START
    assert decision.violations.keys() == {"tpot"}
    assert decision.choice is not None and decision.choice.decode_percentage > 30
    assert decision.candidates and all(c.predicted_tpot is not None for c in decision.candidates)
    assert decision.observed["tpot_ms"] == pytest.approx(90.0)
    assert manager.history == [START, decision.choice]
    status = ctrl.get_controller_status()
    assert status["current_allocation"] == decision.choice.as_dict()
    assert status["statistics"]["successful_adjustments"] == 1 and status["statistics"]["success_rate"] == 1.0
    assert status["last_adjustment_time"] == 100.0 and status["last_load_shift_time"] is None
    json.dumps(status)  # the status page serialises it
    assert status["recent_decisions"][-1]["label"] == f"70.0/30.0 -> {format_split(decision.choice)}"


def test_cooldown_then_settling_window() -> None:
    ctrl, _, manager = controller(cooldown_seconds=10.0, escalate=False, candidate_bounds=ONE_STEP)
    assert ctrl.step(now=0.0).action == "adjust"
    held = ctrl.step(now=5.0)
    assert held.action == "hold" and "cooldown" in held.reason and held.violations  # still observed, not acted on
    settling = ctrl.step(now=20.0)  # past the cooldown, but the 30 s window began before the move
    assert settling.action == "hold" and "settling" in settling.reason
    assert ctrl.step(now=30.0).action == "adjust"  # the window now holds only the new split's samples
    assert len(manager.history) == 3


def test_escalates_only_when_the_last_move_is_not_helping() -> None:
    ctrl, source, manager = controller(cooldown_seconds=10.0, candidate_bounds=ONE_STEP)
    first = ctrl.step(now=0.0)  # TPOT 90 ms: 1.8x
    source.metrics = window(ttft=40.0, tpot=70.0)  # better than at the move: the move is taking effect
    assert "settling" in ctrl.step(now=12.0).reason
    source.metrics = window(ttft=40.0, tpot=92.0)  # about as bad as at the move: noise, keep waiting
    assert "settling" in ctrl.step(now=13.0).reason
    source.metrics = window(ttft=40.0, tpot=100.0)  # worse by more than min_improvement: not enough
    escalated = ctrl.step(now=14.0)
    assert escalated.action == "adjust" and escalated.success and "escalating" in escalated.reason
    assert first.choice is not None and escalated.choice is not None
    assert escalated.choice.decode_percentage > first.choice.decode_percentage
    assert len(manager.history) == 3


def test_escalation_does_not_teach_the_predictor() -> None:
    ctrl, source, _ = controller(cooldown_seconds=10.0, predictor="paper", candidate_bounds=ONE_STEP)
    ctrl.step(now=0.0)
    source.metrics = window(ttft=40.0, tpot=120.0)
    assert ctrl.step(now=10.0).action == "adjust"  # escalated on a window that mixes both splits
    assert ctrl.slo_algorithm.predictor.describe()["tpot_points"] == 1


def test_without_window_settling_only_the_cooldown_holds() -> None:
    ctrl, _, _ = controller(cooldown_seconds=10.0, settle_on_window=False, candidate_bounds=ONE_STEP)
    ctrl.step(now=0.0)
    assert ctrl.step(now=9.0).action == "hold"
    assert ctrl.step(now=10.0).action == "adjust"


def test_held_windows_do_not_teach_the_predictor() -> None:
    ctrl, _, _ = controller(predictor="paper")
    ctrl.step(now=0.0)
    ctrl.step(now=5.0)
    assert ctrl.slo_algorithm.predictor.describe()["tpot_points"] == 1


def test_min_samples_gates_action() -> None:
    ctrl, _, manager = controller(metrics=window(ttft=400.0, tpot=400.0, n=4), min_samples=5)
    decision = ctrl.step(now=0.0)
    assert decision.action == "keep" and decision.violations == {}
    assert manager.history == [START]


def test_compliant_window_keeps() -> None:
    ctrl, _, manager = controller(metrics=window(), prefer_prefill=False)
    assert [ctrl.step(now=float(t)).action for t in range(5)] == ["keep"] * 5
    assert manager.history == [START]


def test_decision_log_is_bounded() -> None:
    ctrl, _, _ = controller(metrics=window(), decision_log_size=3)
    for t in range(10):
        ctrl.step(now=float(t))
    status = ctrl.get_controller_status()
    assert status["statistics"]["total_decisions"] == 10
    assert [d["time"] for d in status["recent_decisions"]] == [7.0, 8.0, 9.0]
    assert [d.time for d in ctrl.get_recent_decisions(2)] == [8.0, 9.0]


def test_grid_from_the_manager_status() -> None:
    grid = SMGrid(132, 8, 8)
    manager = InMemoryResourceManager(grid.allocation(96), sm_grid=grid)
    ctrl, _, _ = controller(manager=manager)
    decision = ctrl.step(now=0.0)
    assert decision.success is True  # the in-memory manager validates against its grid
    for c in decision.candidates:
        grid.prefill_sms(c.allocation)
    assert decision.choice is not None and grid.prefill_sms(decision.choice) < 96


def test_step_without_now_reads_the_clock() -> None:
    clock = VirtualClock(start=42.0)
    ctrl, _, _ = controller(clock=clock)
    assert ctrl.step().time == 42.0


def test_profile_predictor_through_the_controller() -> None:
    with pytest.raises(ValueError, match="needs a profile"):
        controller(predictor="profile")
    ctrl, _, _ = controller(predictor="profile",
                            predictor_options={"profile": lambda a, m: (50.0, 2000.0 / a.decode_percentage, 5.0)})
    decision = ctrl.step(now=0.0)
    assert decision.choice is not None and 2000.0 / decision.choice.decode_percentage <= 50.0


# -- windows since a switch, misses within the threshold, anticipation ------------------------------

class SinceMetrics:
    """A source that can give the window since a time: `fresh` from `switch_time` on, `stale` before."""

    def __init__(self, stale: AggregatedMetrics, fresh: AggregatedMetrics, clock: VirtualClock) -> None:
        self.stale, self.fresh, self.clock = stale, fresh, clock
        self.switch_time: float | None = None
        self.calls: list[float | None] = []

    def get_current_window_metrics(self, since: float | None = None) -> AggregatedMetrics:
        self.calls.append(since)
        now = self.clock.now()
        if since is not None and self.switch_time is not None and since >= self.switch_time:
            return dataclasses.replace(self.fresh, window_start_time=since, window_end_time=now)
        return dataclasses.replace(self.stale, window_start_time=now - 30.0, window_end_time=now)


def test_with_windows_since_a_switch_the_new_split_is_judged_after_the_cooldown() -> None:
    clock = VirtualClock()
    source = SinceMetrics(TPOT_BAD, window(tpot=80.0, n=4), clock)
    manager = InMemoryResourceManager(START)
    ctrl = SLOAwareResourceController(SLOConstraints(), source, manager, cooldown_seconds=10.0, clock=clock,
                                      candidate_bounds=ONE_STEP, predictor="paper", shift_ratio=None)
    assert ctrl.step().action == "adjust"
    source.switch_time = 0.0
    clock.set(10.0)
    held = ctrl.step()  # past the cooldown, but 4 TPOT samples since the move: too few to judge
    assert held.action == "hold" and "4 TPOT samples since the last adjustment" in held.reason
    assert source.calls[-1] == pytest.approx(0.0)  # asked for the window since the move
    source.fresh = window(tpot=80.0, n=20)
    clock.set(12.0)
    again = ctrl.step()  # 20 fresh samples, still 1.6x: move again without waiting out the 30 s window
    assert again.action == "adjust" and "escalating" not in again.reason
    assert ctrl.slo_algorithm.predictor.describe()["tpot_points"] == 2  # the fresh window taught it


def test_a_pending_switch_holds_and_restarts_the_fresh_window() -> None:
    clock = VirtualClock()
    source = SinceMetrics(TPOT_BAD, window(tpot=40.0), clock)

    class Slow(InMemoryResourceManager):
        pending = True

        def get_status(self) -> dict:
            return {**super().get_status(), "switch_pending_for": ["decode"] if self.pending else []}

    manager = Slow(START)
    ctrl = SLOAwareResourceController(SLOConstraints(), source, manager, cooldown_seconds=5.0, clock=clock,
                                      shift_ratio=None)
    assert ctrl.step().action == "adjust"
    clock.set(8.0)
    held = ctrl.step()
    assert held.action == "hold" and "still being applied" in held.reason
    manager.pending = False
    source.switch_time = 8.0
    clock.set(9.0)
    assert ctrl.step().action == "keep"
    assert source.calls[-1] == pytest.approx(8.0)  # samples from when the switch took effect


def test_a_miss_within_the_threshold_is_acted_on_for_a_real_gain() -> None:
    mild = window(ttft=105.0, tpot=20.0)  # TTFT 1.05x: missed, not violated
    ctrl, _, _ = controller(metrics=mild, predictor="paper")
    first = ctrl.step(now=0.0)
    assert not first.violations and first.action == "adjust" and first.reason.startswith("ttft missed")
    assert first.choice is not None and first.choice.prefill_percentage > 70
    half = AggregatedMetrics(window_start_time=0.0, window_end_time=30.0, request_throughput=10.0,
                             request_arrival_rate=10.0, ttft_samples=np.repeat([95.0, 106.0], 10),
                             tpot_samples=np.full(20, 20.0))  # half the requests late: at most +50%
    strict, _, _ = controller(metrics=half, predictor="paper", min_attainment_gain=0.6)
    kept = strict.step(now=0.0)
    assert kept.action == "keep" and "raise attainment by 60.0%" in kept.reason


def test_predictions_are_checked_against_the_window_that_follows() -> None:
    """Each evaluated decision predicts the split it leaves in force; the first window of that split alone
    is recorded next to it (observed / expected), and the errors add up in the status."""
    ctrl, source, _ = controller(cooldown_seconds=10.0, candidate_bounds=ONE_STEP, prefer_prefill=False)
    move = ctrl.step(now=0.0)  # TPOT 90 ms at 30% decode
    assert move.action == "adjust" and move.prediction is not None and move.choice is not None
    assert move.prediction["allocation"] == move.choice.as_dict()
    expected_tpot = move.prediction["tpot_ms"]
    assert expected_tpot == pytest.approx(90.0 * 30 / 40 * (40 / 50) / (30 / 50) * 40 / 30 * 30 / 40, rel=0.3)
    source.metrics = window(ttft=40.0, tpot=45.0)  # what the new split really reads
    assert ctrl.step(now=12.0).action == "hold"  # the window still holds the old split's samples
    checked = ctrl.step(now=30.0)
    assert checked.action == "keep"
    logged = ctrl.get_recent_decisions()[0]
    assert logged.time == 0.0 and logged.outcome is not None
    assert logged.outcome["tpot_ms"] == pytest.approx(45.0)
    assert logged.outcome["tpot_ratio"] == pytest.approx(45.0 / expected_tpot)
    assert logged.outcome["attainment"] == 1.0
    assert logged.outcome["attainment_error"] == pytest.approx(1.0 - move.prediction["attainment"])
    accuracy = ctrl.get_controller_status()["prediction_accuracy"]
    assert accuracy["adjust"]["checked"] == 1 and accuracy["keep"]["checked"] == 0
    assert accuracy["adjust"]["tpot_abs_log_ratio"] == pytest.approx(abs(math.log(45.0 / expected_tpot)))
    ctrl.step(now=35.0)  # the keep at 30 s is checked by the next window
    assert ctrl.get_controller_status()["prediction_accuracy"]["keep"]["checked"] == 1
    status = ctrl.get_controller_status()
    json.dumps(status)
    assert status["recent_decisions"][0]["outcome"]["tpot_ms"] == pytest.approx(45.0)


def test_a_prediction_for_a_split_that_moved_again_is_not_checked() -> None:
    ctrl, source, _ = controller(cooldown_seconds=10.0, candidate_bounds=ONE_STEP, prefer_prefill=False)
    ctrl.step(now=0.0)
    source.metrics = window(ttft=40.0, tpot=120.0)
    assert "escalating" in ctrl.step(now=14.0).reason  # another move before any window of the first one
    accuracy = ctrl.get_controller_status()["prediction_accuracy"]
    assert accuracy["adjust"]["checked"] == 0 and accuracy["superseded"] >= 1


# -- faults ---------------------------------------------------------------------------------------

def test_metrics_failure_is_logged_counted_and_survived(caplog: pytest.LogCaptureFixture) -> None:
    ctrl, source, manager = controller()
    source.fail = True
    with caplog.at_level(logging.WARNING, logger="semipd.slo.controller"):
        decision = ctrl.step(now=0.0)
    assert decision.action == "error" and "metrics source down" in (decision.error or "")
    assert "metrics" in caplog.text
    stats = ctrl.get_controller_status()["statistics"]
    assert stats["errors"] == 1 and stats["metrics_errors"] == 1
    assert manager.history == [START]
    source.fail = False
    assert ctrl.step(now=1.0).action == "adjust"


def test_refused_reallocation(caplog: pytest.LogCaptureFixture) -> None:
    manager = FlakyManager(START, mode="refuse")
    ctrl, _, _ = controller(manager=manager)
    with caplog.at_level(logging.WARNING, logger="semipd.slo.controller"):
        decision = ctrl.step(now=0.0)
    assert decision.action == "adjust" and decision.success is False and "refused" in decision.reason
    assert "refused" in caplog.text
    assert manager.history == [START]
    assert ctrl.get_controller_status()["current_allocation"] == START.as_dict()
    again = ctrl.step(now=1.0)  # no cooldown after a failure: it tries again
    assert again.action == "adjust" and again.success is False
    stats = ctrl.get_controller_status()["statistics"]
    assert stats["failed_adjustments"] == 2 and stats["successful_adjustments"] == 0
    assert stats["success_rate"] == 0.0 and stats["errors"] == 0


def test_raising_reallocation(caplog: pytest.LogCaptureFixture) -> None:
    manager = FlakyManager(START, mode="raise")
    ctrl, _, _ = controller(manager=manager)
    with caplog.at_level(logging.WARNING, logger="semipd.slo.controller"):
        decision = ctrl.step(now=0.0)
    assert decision.success is False and "rotation failed" in (decision.error or "")
    assert "rotation failed" in caplog.text
    stats = ctrl.get_controller_status()["statistics"]
    assert stats["failed_adjustments"] == 1 and stats["errors"] == 1 and stats["reallocation_errors"] == 1
    assert manager.history == [START]
    manager.mode = "ok"
    assert ctrl.step(now=1.0).success is True
    assert ctrl.get_controller_status()["statistics"]["success_rate"] == pytest.approx(0.5)


def test_status_failure(caplog: pytest.LogCaptureFixture) -> None:
    manager = FlakyManager(START)
    manager.status_fails = True
    ctrl, _, _ = controller(manager=manager)
    with caplog.at_level(logging.WARNING, logger="semipd.slo.controller"):
        decision = ctrl.step(now=0.0)
    assert decision.action == "error" and decision.allocation is None
    assert ctrl.get_controller_status()["statistics"]["status_errors"] == 1
    assert "status" in caplog.text
    manager.status_fails = False
    assert ctrl.step(now=1.0).action == "adjust"


def test_algorithm_failure_is_an_error_decision() -> None:
    def broken(allocation: SMAllocation, metrics: AggregatedMetrics) -> tuple[float, float, float]:
        raise ZeroDivisionError("bad profile")

    ctrl, _, manager = controller(predictor="profile", predictor_options={"profile": broken})
    decision = ctrl.step(now=0.0)
    assert decision.action == "error" and "bad profile" in (decision.error or "")
    assert ctrl.get_controller_status()["statistics"]["algorithm_errors"] == 1
    assert manager.history == [START]


# -- the monitoring thread ----------------------------------------------------------------------

def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


class Alternating(FakeMetrics):
    """Fails every other call."""

    def get_current_window_metrics(self) -> AggregatedMetrics:
        self.fail = self.calls % 2 == 1
        return super().get_current_window_metrics()


def test_thread_survives_faults_and_stops_promptly() -> None:
    manager = FlakyManager(START, mode="raise")
    source = Alternating(TPOT_BAD)
    ctrl = SLOAwareResourceController(SLOConstraints(), source, manager, monitoring_interval=0.01)
    ctrl.start_monitoring()
    try:
        assert ctrl.get_controller_status()["running"] is True
        ctrl.start_monitoring()  # a second start is a no-op
        assert _wait_for(lambda: ctrl.get_controller_status()["statistics"]["total_decisions"] >= 6)
        stats = ctrl.get_controller_status()["statistics"]
        assert stats["metrics_errors"] >= 2 and stats["reallocation_errors"] >= 2
        assert ctrl.running
    finally:
        ctrl.stop_monitoring()
    assert not ctrl.running and manager.history == [START]


def test_stop_does_not_wait_out_a_long_interval() -> None:
    ctrl, source, _ = controller(metrics=window(), monitoring_interval=3600.0, clock=None)
    ctrl.start_monitoring()
    assert _wait_for(lambda: source.calls >= 1)
    started = time.monotonic()
    ctrl.stop_monitoring()
    assert time.monotonic() - started < 30.0  # an Event wait, not an hour's sleep
    assert not ctrl.running


@pytest.mark.parametrize(("kwargs", "field"), [({"monitoring_interval": 0}, "monitoring_interval"),
                                                ({"cooldown_seconds": -1}, "cooldown_seconds"),
                                                ({"decision_log_size": 0}, "decision_log_size"),
                                                ({"min_samples": 0}, "min_samples"),
                                                ({"min_attainment_gain": -0.1}, "min_attainment_gain"),
                                                ({"park_margin": 1.5}, "park_margin"),
                                                ({"reversal_memory_seconds": -1}, "reversal_memory_seconds"),
                                                ({"shift_ratio": 1.0}, "shift_ratio")])
def test_validation(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        controller(**kwargs)
