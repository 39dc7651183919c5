"""`EngineConfig`: everything the real engine is built from. No torch here (the server and the
CLI build configs before the engine loads)."""

from __future__ import annotations

from dataclasses import dataclass

from semipd.engine.semi_pd.config import SemiPDConfig

MODES = ("unified", "semi-pd")
"""Execution modes: ``"unified"`` (mixed chunked-prefill batches on the whole device) and
``"semi-pd"`` (prefill and decode workers on SM partitions; see `semipd.engine.semi_pd.engine`)."""
DEVICES = ("auto", "cpu", "cuda")


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class EngineConfig:
    """Model, device and scheduling limits of one `Engine`. Invalid values raise ValueError naming the field."""

    model: str
    """A local Hugging Face model directory, or a preset name (with ``load_format="dummy"``)."""
    load_format: str = "auto"
    """``"auto"``/``"safetensors"``: the directory's weights; ``"dummy"``: random weights."""
    dtype: str = "auto"
    """``"auto"`` (checkpoint half dtype on CUDA, float32 on CPU), ``"bfloat16"``, ``"float16"``, ``"float32"``."""
    device: str = "auto"
    """``"cuda"``, ``"cpu"``, or ``"auto"`` (CUDA when available)."""
    mode: str = "unified"
    """Scheduling mode; see `MODES`."""
    gpu_memory_utilization: float = 0.9
    """Share of the GPU's memory this engine may fill (weights, activations, KV cache)."""
    block_size: int = 16
    """Tokens per KV block."""
    num_kv_blocks: int | None = None
    """KV blocks to allocate; None sizes the pool from free memory (CUDA) or a fixed budget (CPU)."""
    max_num_batched_tokens: int = 8192
    """Token budget of one iteration (decodes count one each; prefill chunks take the rest)."""
    max_num_seqs: int = 256
    """Most requests running at once (also the largest decode CUDA graph)."""
    max_model_len: int | None = None
    """Longest prompt + output; None: the model's max_position_embeddings."""
    enforce_eager: bool = False
    """Skip CUDA graphs (every step runs eagerly)."""
    piecewise_max_tokens: int = 2048
    """Unified mode: steps with prefill chunks of up to this many tokens replay piecewise CUDA graphs
    (the model between attention calls, bucketed by token count; attention runs eagerly); larger
    steps run eagerly, where the device time dwarfs the launches. 0: no piecewise graphs."""
    async_scheduling: bool = True
    """Overlap the host work of a step with the device work of the one before: schedule and launch
    step N+1 before reading step N's tokens (unified mode). Off: one step at a time."""
    attention_backend: str | None = None
    """``"triton"`` or ``"torch"``; None: triton on CUDA, torch on CPU."""
    tokenizer: str | None = None
    """Directory with ``tokenizer.json``; None: the model directory (a byte-level stand-in when it has none)."""
    kv_watermark: float = 0.01
    """Share of KV blocks new prefills must leave free, so running decodes can grow."""
    seed: int = 0
    """Seeds dummy weights and the sampling seeds of requests that bring none."""
    metrics_window_seconds: float = 30.0
    """Sliding window of the metrics collector."""
    semipd: SemiPDConfig | None = None
    """Options of ``mode="semi-pd"`` (controller, SLOs, reachable splits, ...); None: the defaults."""

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a non-empty string, got {self.model!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not available in this engine; modes: {list(MODES)}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be one of {list(DEVICES)} or 'cuda:N', got {self.device!r}")
        if not isinstance(self.gpu_memory_utilization, (int, float)) or not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}")
        for name in ("block_size", "max_num_batched_tokens", "max_num_seqs"):
            if not _positive_int(getattr(self, name)):
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if (not isinstance(self.piecewise_max_tokens, int) or isinstance(self.piecewise_max_tokens, bool)
                or self.piecewise_max_tokens < 0):
            raise ValueError(f"piecewise_max_tokens must be an int >= 0, got {self.piecewise_max_tokens!r}")
        for name in ("num_kv_blocks", "max_model_len"):
            value = getattr(self, name)
            if value is not None and not _positive_int(value):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
        if not isinstance(self.kv_watermark, (int, float)) or not 0 <= self.kv_watermark < 1:
            raise ValueError(f"kv_watermark must be in [0, 1), got {self.kv_watermark!r}")
        if not isinstance(self.metrics_window_seconds, (int, float)) or not self.metrics_window_seconds > 0:
            raise ValueError(f"metrics_window_seconds must be > 0, got {self.metrics_window_seconds!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        for name in ("enforce_eager", "async_scheduling"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.semipd is not None:
            if not isinstance(self.semipd, SemiPDConfig):
                raise ValueError(f"semipd must be None or a SemiPDConfig, got {type(self.semipd).__name__}")
            if self.mode != "semi-pd":
                raise ValueError(f"semipd options need mode 'semi-pd', got mode {self.mode!r}")
