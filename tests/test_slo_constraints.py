"""SLOConstraints and CandidateBounds: seed defaults and validation."""

from __future__ import annotations

import dataclasses

import pytest

from semipd.slo import CandidateBounds, SLOConstraints


def test_seed_defaults() -> None:
    slo = SLOConstraints()
    assert slo.as_dict() == {
        "ttft_target_ms": 100.0,
        "tpot_target_ms": 50.0,
        "ttft_percentile": 95.0,
        "tpot_percentile": 95.0,
        "ttft_violation_threshold": 1.1,
        "tpot_violation_threshold": 1.1,
    }


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SLOConstraints().ttft_target_ms = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ttft_target_ms", 0.0),
        ("tpot_target_ms", -5.0),
        ("ttft_target_ms", float("inf")),
        ("tpot_target_ms", "50"),
        ("ttft_percentile", 0.0),
        ("tpot_percentile", 100.5),
        ("ttft_percentile", True),
        ("ttft_violation_threshold", 0.99),
        ("tpot_violation_threshold", float("nan")),
    ],
)
def test_invalid_constraints_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SLOConstraints(**{field: value})


def test_boundary_values_accepted() -> None:
    slo = SLOConstraints(ttft_percentile=100.0, tpot_percentile=0.1, ttft_violation_threshold=1.0)
    assert slo.ttft_percentile == 100.0 and slo.ttft_violation_threshold == 1.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_prefill_percentage", -1.0),
        ("max_prefill_percentage", 0.0),
        ("max_decode_percentage", 101.0),
        ("adjustment_step", 0.0),
        ("max_steps", 0),
        ("max_steps", 1.5),
    ],
)
def test_invalid_bounds_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        CandidateBounds(**{field: value})


def test_bounds_min_above_max() -> None:
    with pytest.raises(ValueError, match="min_prefill_percentage"):
        CandidateBounds(min_prefill_percentage=60.0, max_prefill_percentage=50.0)
