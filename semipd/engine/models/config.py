"""`ModelConfig`: the architecture facts the engine needs, parsed from a Hugging Face ``config.json``.

The architectures and their model classes are listed in `registry`; one decoder implementation
(`semipd.engine.models.llama`) covers every one so far through three flags: ``qkv_bias`` /
``o_bias`` (Qwen2 has biases on q, k and v), ``qk_norm`` (Qwen3 normalises q and k per head
before RoPE). Both the transformers 4 layout (``rope_theta`` + ``rope_scaling``,
``torch_dtype``) and the transformers 5 layout (``rope_parameters``, ``dtype``) are read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semipd.engine.models.presets import get_preset, is_preset, preset_names
from semipd.engine.models.registry import ARCHITECTURES, BY_MODEL_TYPE

KNOWN_ARCHITECTURES: tuple[str, ...] = tuple(ARCHITECTURES)
# scaled RoPE types -> the keys each needs
_ROPE_KEYS: dict[str, tuple[str, ...]] = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}
_ROPE_TYPES = ("default", *_ROPE_KEYS)
_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class ModelConfig:
    """Decoder-only transformer shape and numerics (Llama family)."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False)
    """None (plain RoPE), or {"rope_type": "linear", "factor"} or {"rope_type": "llama3", "factor",
    "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}."""
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    torch_dtype: str | None = None
    """The checkpoint's dtype name ("bfloat16", ...), None when the config gives none."""
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture {self.architecture!r} is not supported; known: {list(KNOWN_ARCHITECTURES)}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps}")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta}")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type")
            if kind not in _ROPE_KEYS:
                raise ValueError(f"rope_scaling type {kind!r} is not supported; known: {list(_ROPE_TYPES)}")
            missing = set(_ROPE_KEYS[kind]) - set(self.rope_scaling)
            if missing:
                raise ValueError(f"rope_scaling ({kind}) lacks {sorted(missing)}")
        if self.torch_dtype is not None and self.torch_dtype not in _DTYPES:
            raise ValueError(f"torch_dtype must be one of {list(_DTYPES)}, got {self.torch_dtype!r}")

    # -- derived sizes ---------------------------------------------------------
    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def num_params(self) -> int:
        """Parameter count (tied embeddings counted once)."""
        h, i, layers = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        per_layer = h * (self.q_size + 2 * self.kv_size) + self.q_size * h + 3 * h * i + 2 * h
        if self.qkv_bias:
            per_layer += self.q_size + 2 * self.kv_size
        if self.o_bias:
            per_layer += h
        if self.qk_norm:
            per_layer += 2 * self.head_dim
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return layers * per_layer + embeddings + h

    # -- parsing ---------------------------------------------------------------
    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> ModelConfig:
        """Parse a Hugging Face config dict. Raises ValueError naming what is wrong."""
        arch = _architecture(cfg)
        flags = ARCHITECTURES[arch]
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if key not in cfg:
                raise ValueError(f"config lacks {key!r}")
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act {act!r} is not supported; only 'silu'")
        if cfg.get("mlp_bias"):
            raise ValueError("mlp_bias=true is not supported")
        max_pos = int(cfg.get("max_position_embeddings", 2048))
        _check_sliding_window(arch, cfg, max_pos)
        heads = int(cfg["num_attention_heads"])
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        theta, scaling = _rope(cfg)
        attention_bias = bool(cfg.get("attention_bias", False))
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        return cls(
            architecture=arch,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            max_position_embeddings=max_pos,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=flags.forced_qkv_bias or attention_bias,
            o_bias=attention_bias and not flags.forced_qkv_bias,
            qk_norm=flags.qk_norm,
            torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )

    @classmethod
    def from_json_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model config not found: {path}")
        with path.open() as f:
            return cls.from_dict(json.load(f))


def _architecture(cfg: dict[str, Any]) -> str:
    archs = cfg.get("architectures") or []
    for arch in archs:
        if arch in ARCHITECTURES:
            return arch
    if not archs and cfg.get("model_type") in BY_MODEL_TYPE:
        return BY_MODEL_TYPE[cfg["model_type"]]
    found = archs or cfg.get("model_type")
    raise ValueError(f"architecture {found!r} is not supported; known: {list(KNOWN_ARCHITECTURES)}")


def _check_sliding_window(arch: str, cfg: dict[str, Any], max_pos: int) -> None:
    """Sliding-window attention is not implemented: refuse configs that would need it."""
    window = cfg.get("sliding_window")
    if arch.startswith("Qwen") and not cfg.get("use_sliding_window", False):
        return
    if window is not None and int(window) < max_pos:
        raise ValueError(f"sliding_window={window} < max_position_embeddings={max_pos}: "
                         "sliding-window attention is not supported")


def _rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, llama3 scaling or None) from either config layout."""
    params = dict(cfg.get("rope_parameters") or {})
    scaling = cfg.get("rope_scaling")
    if scaling:
        params.update(scaling)
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind not in _ROPE_TYPES:
        raise ValueError(f"rope_scaling type {kind!r} is not supported; known: {list(_ROPE_TYPES)}")
    return theta, {"rope_type": kind, **{k: params[k] for k in _ROPE_KEYS[kind] if k in params}}


def resolve_model_config(model: str | Path) -> tuple[ModelConfig, Path | None]:
    """(config, directory) for a model directory, or (config, None) for a preset name."""
    path = Path(model)
    if path.is_dir():
        return ModelConfig.from_json_file(path / "config.json"), path
    if is_preset(str(model)):
        return ModelConfig.from_dict(get_preset(str(model))), None
    raise ValueError(f"model {str(model)!r} is neither a directory nor a preset; presets: {preset_names()}")
