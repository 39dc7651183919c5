"""The model registry: every Hugging Face architecture the engine runs, with its model class and the
facts that set its config flags. Torch-free (the API process reads configs too); the class is
imported only when a model is built.

Adding an architecture: one line here when an existing model file covers it with its flags (the
Llama file covers Llama, Mistral, Qwen2's q/k/v biases and Qwen3's per-head q/k norms), or a new
model file (one per family, top to bottom like `llama.py`) plus its line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Architecture:
    model_type: str
    """``model_type`` in config.json (used when ``architectures`` is missing)."""
    model: str
    """``module:Class`` of the model implementation."""
    forced_qkv_bias: bool = False
    """q/k/v projections always carry a bias (Qwen2), whatever config.json says."""
    qk_norm: bool = False
    """q and k are RMS-normed per head before RoPE (Qwen3)."""


_LLAMA = "semipd.engine.models.llama:LlamaForCausalLM"
ARCHITECTURES: dict[str, Architecture] = {
    "LlamaForCausalLM": Architecture("llama", _LLAMA),
    "MistralForCausalLM": Architecture("mistral", _LLAMA),
    "Qwen2ForCausalLM": Architecture("qwen2", _LLAMA, forced_qkv_bias=True),
    "Qwen3ForCausalLM": Architecture("qwen3", _LLAMA, qk_norm=True),
}
BY_MODEL_TYPE: dict[str, str] = {a.model_type: name for name, a in ARCHITECTURES.items()}


def model_class(architecture: str) -> Any:
    """The model class that runs `architecture` (imports its module)."""
    module, _, cls = ARCHITECTURES[architecture].model.partition(":")
    return getattr(importlib.import_module(module), cls)
