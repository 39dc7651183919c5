"""Attention backends over the paged KV cache: "torch" (reference) and "triton"."""

from semipd.engine.runtime.attention.base import AttentionBackend, AttentionMetadata
from semipd.engine.runtime.attention.registry import get_backend, register_backend

__all__ = ["AttentionBackend", "AttentionMetadata", "get_backend", "register_backend"]
