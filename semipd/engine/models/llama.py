"""The Llama-family decoder (Llama, Mistral, Qwen2, Qwen3), one file, top to bottom.

    token ids -> embedding
    per layer:  RMSNorm(+residual) -> fused QKV projection (+bias: Qwen2)
                -> per-head q/k RMSNorm (Qwen3) -> RoPE + K/V cache write -> paged attention -> o_proj
                RMSNorm(+residual) -> fused gate_up projection -> SiLU(gate) * up -> down
    final RMSNorm -> lm_head, only on the rows that get a token sampled

The forward pass is a chain of `Model.segment`s with one attention call between each two:
everything but attention reads only tensors, so mixed and prefill steps can replay the segments
from CUDA graphs (`semipd.engine.runtime.piecewise_graphs`) and run attention eagerly.

Differences between the architectures are flags on `ModelConfig`. Parameters are
allocated with ``torch.empty`` on the target device (no init work); the loader fills them.
Hugging Face's separate q/k/v and gate/up weights land in row slices of the fused ones
(`packed_shards`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from semipd.engine.models.config import ModelConfig
from semipd.engine.runtime.attention.base import AttentionBackend, AttentionMetadata
from semipd.engine.runtime.kernels import build_rope_cache, rms_norm, rope_and_store_kvcache, silu_and_mul
from semipd.engine.runtime.kernels.skinny_linear import SkinnyLinearPlan

KVCaches = Sequence[tuple[torch.Tensor, torch.Tensor]]


def _param(*shape: int, dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=dtype, device=device), requires_grad=False)


class Linear(nn.Module):
    """y = x W^T (+ b). Weight [out, in], as in the checkpoint. Decode-sized inputs go through the
    model's `SkinnyLinearPlan` (tuned kernels; ``F.linear`` until it is tuned)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.weight = _param(out_features, in_features, dtype=dtype, device=device)
        self.bias = _param(out_features, dtype=dtype, device=device) if bias else None
        self.plan: SkinnyLinearPlan | None = None

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if self.plan is not None:
            return self.plan.linear(x, self.weight, self.bias, out=out)
        if out is None:
            return F.linear(x, self.weight, self.bias)
        return out.copy_(F.linear(x, self.weight, self.bias))


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.eps = eps
        self.weight = _param(size, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor,
                residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Norm of x, or (norm of x + residual, x + residual) when residual is given."""
        return rms_norm(x, self.weight, self.eps, residual)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, backend: AttentionBackend, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.num_heads, self.num_kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_size, self.kv_size = cfg.q_size, cfg.kv_size
        self.scale = cfg.head_dim ** -0.5
        self.backend = backend
        self.qkv_proj = Linear(cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, cfg.qkv_bias, dtype, device)
        self.o_proj = Linear(cfg.q_size, cfg.hidden_size, cfg.o_bias, dtype, device)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, dtype, device)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, dtype, device)
        else:
            self.q_norm = self.k_norm = None

    def project(self, positions: torch.Tensor, x: torch.Tensor, cos_sin_cache: torch.Tensor,
                kv_cache: tuple[torch.Tensor, torch.Tensor], slot_mapping: torch.Tensor,
                qkv_out: torch.Tensor | None = None) -> torch.Tensor:
        """QKV projection (into `qkv_out` when given), q/k norms, RoPE, and the K/V cache write.
        Returns the rotated q [T, num_heads, head_dim], a view of the projection's output."""
        t = x.shape[0]
        qkv = self.qkv_proj(x, out=qkv_out)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(t, self.num_heads, self.head_dim)
        k = k.reshape(t, self.num_kv_heads, self.head_dim)
        v = v.reshape(t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q)
            k = self.k_norm(k)
        rope_and_store_kvcache(q, k, v, positions, cos_sin_cache, kv_cache[0], kv_cache[1], slot_mapping)
        return q

    def attend(self, q: torch.Tensor, kv_cache: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """Paged attention of the rotated q over the cache (into `out` when given): [T, num_heads, head_dim]."""
        return self.backend.attend(q, kv_cache[0], kv_cache[1], meta, self.scale, out=out)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, False, dtype, device)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, False, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, backend: AttentionBackend, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)
        self.self_attn = Attention(cfg, backend, dtype, device)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)
        self.mlp = MLP(cfg, dtype, device)

    def attention_input(self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None,
                        cos_sin_cache: torch.Tensor, kv_cache: tuple[torch.Tensor, torch.Tensor],
                        slot_mapping: torch.Tensor,
                        qkv_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything before attention: (rotated q, the residual stream). `x` is the previous
        layer's output (the embeddings for the first layer, with no residual yet); the norm adds
        the two (fused add + RMSNorm)."""
        if residual is None:
            residual = x
            x = self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        return self.self_attn.project(positions, x, cos_sin_cache, kv_cache, slot_mapping, qkv_out), residual

    def attention_output(self, attn: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything after attention: (this layer's output, the residual stream before it)."""
        x = self.self_attn.o_proj(attn.reshape(attn.shape[0], -1))
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class Model(nn.Module):
    def __init__(self, cfg: ModelConfig, backend: AttentionBackend, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.embed_tokens = nn.Module()
        self.embed_tokens.weight = _param(cfg.vocab_size, cfg.hidden_size, dtype=dtype, device=device)
        self.layers = nn.ModuleList(DecoderLayer(cfg, backend, dtype, device) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)

    @property
    def num_segments(self) -> int:
        """Segments of a forward pass: one before each layer's attention, one after the last."""
        return len(self.layers) + 1

    def segment(self, i: int, input_ids: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor,
                kv_caches: KVCaches, slot_mapping: torch.Tensor, attn: torch.Tensor | None,
                residual: torch.Tensor | None, qkv_out: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The work between attention ``i - 1`` and attention ``i``, which reads nothing but tensors
        (no host values), so a CUDA graph can hold it::

            segment 0:      embedding                              -> layer 0 up to its q
            segment i:      layer i-1 from o_proj (its attn input) -> layer i up to its q
            segment L:      layer L-1 from o_proj                  -> final norm

        Returns (q of layer i, residual), or (final hidden states, None) for the last segment.
        """
        if i == 0:
            x = F.embedding(input_ids, self.embed_tokens.weight)
        else:
            x, residual = self.layers[i - 1].attention_output(attn, residual)
        if i == len(self.layers):
            x, _ = self.norm(x, residual)
            return x, None
        return self.layers[i].attention_input(positions, x, residual, cos_sin_cache, kv_caches[i], slot_mapping,
                                              qkv_out)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor,
                kv_caches: KVCaches, meta: AttentionMetadata,
                layer_hook: Callable[[int], object] | None = None) -> torch.Tensor:
        attn = residual = None
        for i, (layer, kv_cache) in enumerate(zip(self.layers, kv_caches, strict=True)):
            if i and layer_hook is not None:
                layer_hook(i)
            q, residual = self.segment(i, input_ids, positions, cos_sin_cache, kv_caches, meta.slot_mapping, attn,
                                       residual)
            attn = layer.self_attn.attend(q, kv_cache, meta)
        hidden, _ = self.segment(len(self.layers), input_ids, positions, cos_sin_cache, kv_caches, meta.slot_mapping,
                                 attn, residual)
        return hidden


class LlamaForCausalLM(nn.Module):
    """Decoder plus LM head. `forward` returns final hidden states for every token;
    `compute_logits` projects only the rows that are sampled."""

    def __init__(self, cfg: ModelConfig, backend: AttentionBackend, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.config = cfg
        self.model = Model(cfg, backend, dtype, device)
        if cfg.tie_word_embeddings:
            self.lm_head = nn.Module()
            self.lm_head.weight = self.model.embed_tokens.weight
        else:
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, False, dtype, device)
        self.skinny = SkinnyLinearPlan()
        """Kernel choices for decode-sized matmuls, shared by every `Linear` and the LM head."""
        for module in self.modules():
            if isinstance(module, Linear):
                module.plan = self.skinny
        # float32 table: the RoPE kernels rotate in float32 whatever the model dtype.
        cos_sin = build_rope_cache(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling,
                                   device, torch.float32)
        self.register_buffer("cos_sin_cache", cos_sin, persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def packed_shards(self) -> dict[str, tuple[str, int, int]]:
        """Checkpoint sub-module name -> (fused module name, first row, rows) for fused weights."""
        c = self.config
        return {
            "q_proj": ("qkv_proj", 0, c.q_size),
            "k_proj": ("qkv_proj", c.q_size, c.kv_size),
            "v_proj": ("qkv_proj", c.q_size + c.kv_size, c.kv_size),
            "gate_proj": ("gate_up_proj", 0, c.intermediate_size),
            "up_proj": ("gate_up_proj", c.intermediate_size, c.intermediate_size),
        }

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: KVCaches,
                meta: AttentionMetadata, layer_hook: Callable[[int], object] | None = None) -> torch.Tensor:
        """input_ids, positions: [T]; returns hidden states [T, hidden]. ``layer_hook(i)`` runs on
        the host before `Model.segment` i >= 1 (the Semi-PD prefill worker moves streams there;
        what it returns is ignored here)."""
        return self.model(input_ids, positions, self.cos_sin_cache, kv_caches, meta, layer_hook)

    def lm_logits(self, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """[N, hidden] -> [N, vocab] logits in the model dtype (the sampler reads them as they are),
        into `out` when given."""
        return self.skinny.linear(hidden, self.lm_head.weight, out=out)

    def tune_skinny_linears(self, max_rows: int) -> None:
        """Tune the kernels of decode-sized matmuls (at most `max_rows` rows) on this device (CUDA)."""
        self.skinny.tune([m.weight for m in self.modules() if isinstance(m, Linear)] + [self.lm_head.weight],
                         max_rows=max_rows)

    @torch.inference_mode()
    def warm_up_matmuls(self, token_counts: Sequence[int], sample_counts: Sequence[int]) -> None:
        """Run every matmul shape of a batch of each of `token_counts` tokens (the decoder's four
        projections) and of each of `sample_counts` sampled rows (the LM head) on the current
        stream. cuBLAS does per-shape set-up the first time it sees one, and on an H100 that
        stalled the launching thread for 5-40 ms (until the other partition's work drained)."""
        layer, c = self.model.layers[0], self.config
        for m in token_counts:
            x = torch.zeros(m, c.hidden_size, dtype=self.dtype, device=self.device)
            layer.self_attn.qkv_proj(x)
            layer.self_attn.o_proj(torch.zeros(m, c.q_size, dtype=self.dtype, device=self.device))
            layer.mlp.down_proj(layer.mlp.gate_up_proj(x)[:, :c.intermediate_size])
        for m in sample_counts:
            self.lm_logits(torch.zeros(m, c.hidden_size, dtype=self.dtype, device=self.device))

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> [N, vocab] float32 logits."""
        return self.lm_logits(hidden).float()
