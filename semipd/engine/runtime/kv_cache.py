"""The paged KV cache tensors and how many blocks fit.

Layout per layer (see `semipd.engine.runtime.attention.base`): ``k, v: [num_blocks, block_size,
num_kv_heads, head_dim]``. All layers live in one allocation ``[2, layers, ...]`` so the
whole cache is one tensor (one CUDA IPC handle later, for process rotation).

Sizing, on CUDA as vLLM does it: load the weights, run one forward pass of the largest
batch the engine will build to find the activation peak, then give the KV cache what is
left of ``gpu_memory_utilization x total memory`` after everything in use (this process's
weights and peak activations, and other processes). On CPU: an explicit block count, or a
fixed byte budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from semipd.engine.models.config import ModelConfig
from semipd.engine.models.llama import LlamaForCausalLM
from semipd.engine.runtime.attention.base import AttentionMetadata

DEFAULT_CPU_KV_BYTES = 256 << 20
"""KV budget on CPU when no block count is given."""


@dataclass(frozen=True)
class KVCacheSpec:
    """Shape of one block across all layers."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def for_model(cls, config: ModelConfig, block_size: int, dtype: torch.dtype) -> KVCacheSpec:
        return cls(config.num_hidden_layers, config.num_key_value_heads, config.head_dim, block_size, dtype)

    @property
    def bytes_per_token(self) -> int:
        """K and V of one token in every layer."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8

    @property
    def bytes_per_block(self) -> int:
        return self.bytes_per_token * self.block_size


class KVCache:
    """One allocation holding every layer's K and V blocks; `layers[i]` is layer i's (k, v)."""

    def __init__(self, spec: KVCacheSpec, num_blocks: int, device: torch.device | str) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.spec = spec
        self.num_blocks = num_blocks
        self.data = torch.zeros(2, spec.num_layers, num_blocks, spec.block_size, spec.num_kv_heads, spec.head_dim,
                                dtype=spec.dtype, device=device)
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = [
            (self.data[0, i], self.data[1, i]) for i in range(spec.num_layers)
        ]

    @property
    def num_bytes(self) -> int:
        return self.data.numel() * self.data.element_size()


def cpu_num_blocks(spec: KVCacheSpec, num_kv_blocks: int | None) -> int:
    """`num_kv_blocks` if given, else as many blocks as `DEFAULT_CPU_KV_BYTES` holds."""
    return num_kv_blocks if num_kv_blocks is not None else max(1, DEFAULT_CPU_KV_BYTES // spec.bytes_per_block)


@torch.inference_mode()
def profile_activation_peak(model: LlamaForCausalLM, num_tokens: int, max_model_len: int, block_size: int) -> int:
    """Bytes the largest prefill batch (`num_tokens` tokens in sequences of at most
    `max_model_len`) needs on the device beyond what is allocated now, scratch KV blocks excluded."""
    device = model.device
    seq_lens = [min(max_model_len, num_tokens - s) for s in range(0, num_tokens, max_model_len)]
    blocks = [-(-n // block_size) for n in seq_lens]
    spec = KVCacheSpec.for_model(model.config, block_size, model.dtype)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    scratch = KVCache(spec, sum(blocks), device)
    width = max(blocks)
    tables, first = [], 0
    for b in blocks:
        tables.append(list(range(first, first + b)) + [0] * (width - b))
        first += b
    cu = [0]
    for n in seq_lens:
        cu.append(cu[-1] + n)
    meta = AttentionMetadata(
        is_decode=False,
        slot_mapping=torch.cat([torch.arange(n, device=device) + t[0] * block_size for n, t in zip(seq_lens, tables,
                                                                                                   strict=True)]),
        block_tables=torch.tensor(tables, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=device),
        max_seqlen_q=max(seq_lens), max_seqlen_k=max(seq_lens),
    )
    ids = torch.zeros(num_tokens, dtype=torch.int64, device=device)
    positions = torch.cat([torch.arange(n, device=device) for n in seq_lens])
    hidden = model(ids, positions, scratch.layers, meta)
    model.compute_logits(hidden[torch.tensor(cu[1:], device=device) - 1])
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before - scratch.num_bytes
    del scratch, hidden
    torch.cuda.empty_cache()
    return max(0, peak)


def cuda_num_blocks(spec: KVCacheSpec, device: torch.device, gpu_memory_utilization: float,
                    activation_peak_bytes: int) -> int:
    """Blocks that fit in ``gpu_memory_utilization x total`` after memory in use now (weights,
    other processes) and the activation peak. Raises ValueError when not even one fits."""
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    free, total = torch.cuda.mem_get_info(device)
    used = total - free
    budget = int(total * gpu_memory_utilization) - used - activation_peak_bytes
    blocks = budget // spec.bytes_per_block
    if blocks < 1:
        raise ValueError(
            f"no room for the KV cache: {total / 2**30:.1f} GiB x gpu_memory_utilization {gpu_memory_utilization} "
            f"- {used / 2**30:.1f} GiB in use - {activation_peak_bytes / 2**30:.2f} GiB activations < one block; "
            "raise gpu_memory_utilization or lower max_num_batched_tokens"
        )
    return blocks
