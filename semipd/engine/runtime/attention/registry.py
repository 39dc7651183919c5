"""Attention backends by name: ``"torch"`` (the reference) and ``"triton"``. A backend is a class in its
own module, named here by import path and imported on first use (so the Triton one costs nothing
until asked for); `register_backend` adds one from outside."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from semipd.engine.runtime.attention.base import AttentionBackend

_BUILTIN: dict[str, str] = {
    "torch": "semipd.engine.runtime.attention.torch_ref:TorchAttentionBackend",
    "triton": "semipd.engine.runtime.attention.triton_backend:TritonAttentionBackend",
}
_REGISTERED: dict[str, Callable[[], AttentionBackend]] = {}


def register_backend(name: str) -> Callable[[Callable[[], AttentionBackend]], Callable[[], AttentionBackend]]:
    """Class decorator: make a backend constructible by `name` (for backends outside this package)."""

    def deco(factory: Callable[[], AttentionBackend]) -> Callable[[], AttentionBackend]:
        _REGISTERED[name] = factory
        return factory

    return deco


def get_backend(name: str) -> AttentionBackend:
    """Instantiate the backend called `name`; ValueError for an unknown one."""
    if name in _REGISTERED:
        return _REGISTERED[name]()
    if name not in _BUILTIN:
        raise ValueError(f"attention backend {name!r} is unknown; known: {sorted(_BUILTIN | _REGISTERED)}")
    module, _, cls = _BUILTIN[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
