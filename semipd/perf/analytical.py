"""`AnalyticalPerfModel`: a roofline of a transformer on a GPU, and the built-in H100 + Llama-3.1-8B.

An iteration runs GEMMs (linear layers and logits: the weights are read once, 2 * params
FLOPs per token) and attention kernels (KV tokens read and written, 4 * layers * heads *
head_dim FLOPs per (query, key) pair, causal). Each kind takes a smooth maximum of
bytes / bandwidth(SMs) and FLOPs / compute rate(SMs); being separate kernels, their times
add, plus a fixed per-step host overhead (launch gaps, sampling, bookkeeping).

- bandwidth(s) = (BW_max^-p + (s * bw_per_sm)^-p)^(-1/p): linear in SMs for few SMs,
  saturating near BW_max (decode reaches near-full bandwidth with ~48-64 SMs);
- compute rate(s) = flops_per_sm * s / (1 + s / sm_rate_knee): close to linear in SMs,
  with the mild per-SM efficiency loss measured on full-GPU GEMMs;
- time = ((bytes / bandwidth)^q + (flops / rate)^q)^(1/q).

The constants of the built-in `llama-3.1-8b-h100` model were fitted (least squares in log
time) to the measured times of Llama-3.1-8B's 32 linear layers on an H100 SXM over 8 SM
counts and 8 token counts (DESIGN.md "Measured facts"); the calibration points (2048-token
prefill on 132/96/64/32 SMs, batch-64 decode on 132/64/48/32/16 SMs) are within 8%.
The interference tables are the measured slowdowns of a 2048-token prefill and a batch-64
decode step running together on disjoint green contexts.
"""

from __future__ import annotations

from dataclasses import dataclass

from semipd.perf.model import Chunks, PerfModel, check_chunk, check_decode, check_phase, interp_table, kv_capacity


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer's shape (bf16 unless `dtype_bytes` says otherwise)."""

    num_layers: int
    hidden_size: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    dtype_bytes: int = 2
    tied_embeddings: bool = False

    def __post_init__(self) -> None:
        for field in ("num_layers", "hidden_size", "num_q_heads", "num_kv_heads", "head_dim",
                      "intermediate_size", "vocab_size", "dtype_bytes"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")

    @property
    def linear_params(self) -> int:
        """Parameters of the per-layer linear projections (q, k, v, o, gate, up, down), all layers."""
        h, d = self.hidden_size, self.head_dim
        attn = h * self.num_q_heads * d * 2 + h * self.num_kv_heads * d * 2
        mlp = 3 * h * self.intermediate_size
        return self.num_layers * (attn + mlp)

    @property
    def lm_head_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def weight_bytes(self) -> int:
        """All weights: linear layers, embeddings and lm_head (norms are negligible)."""
        tables = 1 if self.tied_embeddings else 2
        return (self.linear_params + tables * self.lm_head_params) * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def attention_flops_per_pair(self) -> int:
        """FLOPs of QK^T and PV for one (query token, key token) pair over all layers and heads."""
        return 4 * self.num_layers * self.num_q_heads * self.head_dim


@dataclass(frozen=True)
class GPUSpec:
    """A GPU's roofline constants (see the module docstring for the formulas)."""

    name: str
    total_sms: int
    memory_bytes: int
    max_bandwidth: float  # bytes/s, saturated
    bandwidth_per_sm: float  # bytes/s per SM before saturation
    bandwidth_sharpness: float  # p
    flops_per_sm: float  # FLOP/s per SM at few SMs
    sm_rate_knee: float  # SMs
    overlap_sharpness: float  # q
    attention_efficiency: float  # attention kernels' share of the GEMM rate
    decode_overhead_s: float  # per decode step: launches, sampling, bookkeeping
    prefill_overhead_s: float  # per prefill iteration
    activation_reserve_bytes: int  # memory kept for activations, workspaces and CUDA graphs
    # Interference: slowdown of each phase against its own SM count, measured with the other running.
    decode_interference: tuple[tuple[int, float], ...]
    prefill_interference: tuple[tuple[int, float], ...]

    def __post_init__(self) -> None:
        if self.total_sms < 2:
            raise ValueError(f"total_sms must be >= 2, got {self.total_sms}")
        for field in ("memory_bytes", "max_bandwidth", "bandwidth_per_sm", "bandwidth_sharpness", "flops_per_sm",
                      "sm_rate_knee", "overlap_sharpness", "attention_efficiency"):
            if not getattr(self, field) > 0:
                raise ValueError(f"{field} must be > 0, got {getattr(self, field)}")
        for field in ("decode_overhead_s", "prefill_overhead_s", "activation_reserve_bytes"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must be >= 0, got {getattr(self, field)}")
        for field in ("decode_interference", "prefill_interference"):
            table = getattr(self, field)
            sms = [s for s, _ in table]
            if not table or sms != sorted(set(sms)) or any(f < 1.0 for _, f in table):
                raise ValueError(f"{field} must be (sms, slowdown >= 1) pairs with increasing sms")

    def bandwidth(self, sms: float) -> float:
        p = self.bandwidth_sharpness
        return (self.max_bandwidth ** -p + (sms * self.bandwidth_per_sm) ** -p) ** (-1.0 / p)

    def compute_rate(self, sms: float) -> float:
        return self.flops_per_sm * sms / (1.0 + sms / self.sm_rate_knee)

    def roofline(self, nbytes: float, flops: float, sms: int) -> float:
        """Seconds for work that moves `nbytes` and does `flops` on `sms` SMs (no overhead)."""
        q = self.overlap_sharpness
        t_mem = nbytes / self.bandwidth(sms)
        t_comp = flops / self.compute_rate(sms)
        return (t_mem ** q + t_comp ** q) ** (1.0 / q)


LLAMA_3_1_8B = ModelSpec(
    num_layers=32, hidden_size=4096, num_q_heads=32, num_kv_heads=8, head_dim=128,
    intermediate_size=14336, vocab_size=128256,
)

H100_SXM = GPUSpec(
    name="h100",
    total_sms=132,
    memory_bytes=80 * 2**30,
    max_bandwidth=2.658e12,
    bandwidth_per_sm=96.8e9,
    bandwidth_sharpness=2.974,
    flops_per_sm=7.888e12,
    sm_rate_knee=206.4,
    overlap_sharpness=1.824,
    attention_efficiency=0.75,
    decode_overhead_s=0.4e-3,
    prefill_overhead_s=0.5e-3,
    activation_reserve_bytes=3 * 2**30,
    # decode64 together / decode64 alone on the remainder, keyed by decode SMs (P112/D20 ... P16/D116)
    decode_interference=((20, 1.324), (36, 1.335), (52, 1.321), (68, 1.253), (84, 1.255), (100, 1.231),
                         (116, 1.100)),
    # prefill2048 together / prefill2048 alone, keyed by prefill SMs
    prefill_interference=((16, 1.033), (32, 1.064), (48, 1.086), (64, 1.109), (80, 1.072), (96, 1.063),
                          (112, 1.094)),
)


class AnalyticalPerfModel(PerfModel):
    """Roofline model of `model` on `gpu` (see the module docstring)."""

    def __init__(self, name: str, model: ModelSpec, gpu: GPUSpec) -> None:
        self.name = name
        self.model = model
        self.gpu = gpu
        self.total_sms = gpu.total_sms

    def __repr__(self) -> str:
        return f"AnalyticalPerfModel({self.name!r})"

    def linear_time(self, tokens: int, sms: int) -> float:
        """The linear layers alone (no attention, logits or overhead): the calibrated part."""
        self.check_sms(sms)
        m = self.model
        return self.gpu.roofline(m.linear_params * m.dtype_bytes, 2.0 * m.linear_params * tokens, sms)

    def prefill_time(self, chunks: Chunks, sms: int) -> float:
        self.check_sms(sms)
        if not chunks:
            return 0.0
        return self.gpu.prefill_overhead_s + self._time(_Work.of_prefill(chunks), sms)

    def decode_time(self, batch_size: int, total_kv_tokens: int, sms: int) -> float:
        self.check_sms(sms)
        check_decode(batch_size, total_kv_tokens)
        if batch_size == 0:
            return 0.0
        return self.gpu.decode_overhead_s + self._time(_Work.of_decode(batch_size, total_kv_tokens), sms)

    def mixed_time(self, chunks: Chunks, batch_size: int, total_kv_tokens: int) -> float:
        check_decode(batch_size, total_kv_tokens)
        if not chunks and batch_size == 0:
            return 0.0
        work, overhead = _Work(), 0.0
        if chunks:
            work, overhead = work + _Work.of_prefill(chunks), self.gpu.prefill_overhead_s
        if batch_size:
            work = work + _Work.of_decode(batch_size, total_kv_tokens)
            overhead = max(overhead, self.gpu.decode_overhead_s)
        return overhead + self._time(work, self.total_sms)

    def interference(self, prefill_sms: int, decode_sms: int) -> tuple[float, float]:
        self.check_sms(prefill_sms)
        self.check_sms(decode_sms)
        return (interp_table(self.gpu.prefill_interference, prefill_sms),
                interp_table(self.gpu.decode_interference, decode_sms))

    def kv_capacity_tokens(self, gpu_memory_utilization: float = 0.9) -> int:
        return kv_capacity(self.gpu.memory_bytes, gpu_memory_utilization, self.model.weight_bytes,
                           self.gpu.activation_reserve_bytes, self.model.kv_bytes_per_token)

    def host_overhead_s(self, phase: str) -> float:
        check_phase(phase)
        return self.gpu.prefill_overhead_s if phase == "prefill" else self.gpu.decode_overhead_s

    def _time(self, work: _Work, sms: int) -> float:
        """GEMMs (linear layers and logits, weights read once) then attention: separate kernels,
        so their times add; each is its own roofline."""
        m, gpu = self.model, self.gpu
        gemm_bytes = (m.linear_params + m.lm_head_params) * m.dtype_bytes
        gemm_flops = 2.0 * (m.linear_params * work.tokens + m.lm_head_params * work.logit_rows)
        attn_bytes = work.kv_tokens_moved * m.kv_bytes_per_token
        attn_flops = m.attention_flops_per_pair * work.attention_pairs / gpu.attention_efficiency
        return gpu.roofline(gemm_bytes, gemm_flops, sms) + gpu.roofline(attn_bytes, attn_flops, sms)


@dataclass(frozen=True)
class _Work:
    """What one iteration does: tokens through the linear layers, rows of logits, KV tokens
    read or written by attention, and (query, key) pairs attention computes."""

    tokens: int = 0
    logit_rows: int = 0
    kv_tokens_moved: int = 0
    attention_pairs: int = 0

    def __add__(self, other: _Work) -> _Work:
        return _Work(self.tokens + other.tokens, self.logit_rows + other.logit_rows,
                     self.kv_tokens_moved + other.kv_tokens_moved, self.attention_pairs + other.attention_pairs)

    @staticmethod
    def of_prefill(chunks: Chunks) -> _Work:
        work = _Work()
        for n, c in chunks:
            check_chunk(n, c)
            # KV written for the new tokens and read for the earlier context; causal attention:
            # each new token sees the earlier context and the new tokens up to itself.
            work = work + _Work(n, 1, c, n * (c - n) + n * (n + 1) // 2)
        return work

    @staticmethod
    def of_decode(batch_size: int, total_kv_tokens: int) -> _Work:
        return _Work(batch_size, batch_size, total_kv_tokens + batch_size, total_kv_tokens)
