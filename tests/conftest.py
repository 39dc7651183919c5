"""Shared test fixtures and markers. GPU tests skip cleanly without CUDA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
AZURE_TRACE = SHARED / "traces" / "azure_llm_2023_conv.csv"


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def azure_trace() -> Path:
    """The Azure conversation trace beside the checkout (skips when absent)."""
    if not AZURE_TRACE.exists():
        pytest.skip(f"trace not found at {AZURE_TRACE}")
    return AZURE_TRACE


os.environ.setdefault("SEMIPD_TEST", "1")
