"""Torch references of the kernel ops, against HF transformers and first principles."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from semipd.engine.runtime.kernels import (
    apply_rope,
    apply_rope_torch,
    build_rope_cache,
    rms_norm,
    rms_norm_torch,
    silu_and_mul,
    silu_and_mul_torch,
    store_kvcache,
    store_kvcache_torch,
    use_triton,
)

LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def _hf_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF LlamaRMSNorm.forward, written out."""
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 8), (5, 40), (3, 4, 16)])
def test_rms_norm_matches_hf(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, dtype=dtype)
    w = torch.randn(shape[-1], dtype=dtype)
    torch.testing.assert_close(rms_norm_torch(x, w, 1e-6), _hf_rms_norm(x, w, 1e-6), rtol=0, atol=0)


def test_rms_norm_fused_residual_returns_the_sum() -> None:
    x, r = torch.randn(6, 32, dtype=torch.bfloat16), torch.randn(6, 32, dtype=torch.bfloat16)
    w = torch.randn(32, dtype=torch.bfloat16)
    y, s = rms_norm_torch(x, w, 1e-5, residual=r)
    torch.testing.assert_close(s, x + r, rtol=0, atol=0)
    torch.testing.assert_close(y, _hf_rms_norm(x + r, w, 1e-5), rtol=0, atol=0)


def test_dispatchers_use_the_reference_on_cpu() -> None:
    x = torch.randn(3, 16)
    assert not use_triton(x)
    w = torch.ones(16)
    torch.testing.assert_close(rms_norm(x, w, 1e-6), rms_norm_torch(x, w, 1e-6))
    torch.testing.assert_close(silu_and_mul(x), silu_and_mul_torch(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_and_mul(dtype: torch.dtype) -> None:
    x = torch.randn(7, 2 * 13, dtype=dtype)
    expected = (F.silu(x[:, :13].float()) * x[:, 13:].float()).to(dtype)
    torch.testing.assert_close(silu_and_mul_torch(x), expected, rtol=0, atol=0)
    with pytest.raises(ValueError):
        silu_and_mul_torch(torch.randn(2, 5))


def _hf_inv_freq(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    """inv_freq from transformers' own RoPE initialisers."""
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = {"rope_type": "default", "rope_theta": theta, **(scaling or {})}
    config = transformers.LlamaConfig(
        hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim, rope_parameters=params
    )
    rope_type = params["rope_type"]
    if rope_type == "default":
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        return inv
    inv, _ = ROPE_INIT_FUNCTIONS[rope_type](config, None)
    return inv


@pytest.mark.parametrize("scaling", [None, LLAMA3, {"rope_type": "linear", "factor": 4.0}])
def test_build_rope_cache_matches_hf(scaling: dict | None) -> None:
    head_dim, theta, max_pos = 64, 500000.0, 20000
    cache = build_rope_cache(head_dim, max_pos, theta, scaling)
    inv = _hf_inv_freq(head_dim, theta, scaling)
    freqs = torch.arange(max_pos, dtype=torch.float)[:, None] * inv[None, :]
    assert cache.shape == (max_pos, head_dim)
    torch.testing.assert_close(cache[:, : head_dim // 2], freqs.cos(), rtol=0, atol=1e-6)
    torch.testing.assert_close(cache[:, head_dim // 2 :], freqs.sin(), rtol=0, atol=1e-6)


def test_llama3_scaling_leaves_high_frequencies_and_divides_low_ones() -> None:
    head_dim, theta = 128, 500000.0
    plain = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
    cache = build_rope_cache(head_dim, 2, theta, LLAMA3)
    scaled = torch.atan2(cache[1, head_dim // 2 :], cache[1, : head_dim // 2])  # angle at position 1
    wavelen = 2 * math.pi / plain
    high = wavelen < 8192 / 4
    low = wavelen > 8192 / 1
    torch.testing.assert_close(scaled[high], plain[high])
    torch.testing.assert_close(scaled[low], plain[low] / 8.0)


@pytest.mark.parametrize(
    "bad",
    [
        {"head_dim": 7},
        {"max_pos": 0},
        {"theta": 0.0},
        {"scaling": {"rope_type": "yarn", "factor": 2.0}},
        {"scaling": {"rope_type": "llama3", "factor": 8.0}},
    ],
)
def test_build_rope_cache_rejects_bad_arguments(bad: dict) -> None:
    args = {"head_dim": 8, "max_pos": 4, "theta": 10000.0, "scaling": None} | bad
    with pytest.raises(ValueError):
        build_rope_cache(**args)


def test_apply_rope_matches_hf_rotate_half() -> None:
    pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    head_dim, max_pos = 32, 64
    cache = build_rope_cache(head_dim, max_pos, 10000.0, LLAMA3 | {"original_max_position_embeddings": 16})
    positions = torch.tensor([0, 5, 63, 17, 1])
    q, k = torch.randn(5, 4, head_dim), torch.randn(5, 2, head_dim)
    half = head_dim // 2
    cos = torch.cat([cache[positions, :half]] * 2, dim=-1)
    sin = torch.cat([cache[positions, half:]] * 2, dim=-1)
    # HF layout: [batch, heads, seq, dim] with cos/sin [batch, seq, dim].
    q_hf, k_hf = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos[None], sin[None])
    q_out, k_out = apply_rope_torch(q.clone(), k.clone(), positions, cache)
    torch.testing.assert_close(q_out, q_hf[0].transpose(0, 1))
    torch.testing.assert_close(k_out, k_hf[0].transpose(0, 1))


def test_apply_rope_is_in_place_on_views_of_a_fused_projection() -> None:
    cache = build_rope_cache(16, 32, 10000.0)
    qkv = torch.randn(3, (4 + 2 + 2) * 16)
    q = qkv[:, : 4 * 16].view(3, 4, 16)
    k = qkv[:, 4 * 16 : 6 * 16].view(3, 2, 16)
    expected_q, expected_k = apply_rope_torch(q.clone(), k.clone(), torch.tensor([1, 2, 3]), cache)
    apply_rope(q, k, torch.tensor([1, 2, 3]), cache)
    torch.testing.assert_close(qkv[:, : 4 * 16].view(3, 4, 16), expected_q)
    torch.testing.assert_close(qkv[:, 4 * 16 : 6 * 16].view(3, 2, 16), expected_k)
    with pytest.raises(ValueError):
        apply_rope_torch(torch.randn(3, 4, 8), torch.randn(3, 2, 8), torch.arange(3), cache)


def _caches(num_blocks: int = 4, block_size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(num_blocks, block_size, 2, 8), torch.zeros(num_blocks, block_size, 2, 8)


def test_store_kvcache_writes_slots_and_skips_minus_one() -> None:
    k_cache, v_cache = _caches()
    k, v = torch.randn(4, 2, 8), torch.randn(4, 2, 8)
    slots = torch.tensor([5, -1, 0, 15])
    store_kvcache(k, v, k_cache, v_cache, slots)
    flat_k, flat_v = k_cache.view(-1, 2, 8), v_cache.view(-1, 2, 8)
    for row, slot in ((0, 5), (2, 0), (3, 15)):
        torch.testing.assert_close(flat_k[slot], k[row])
        torch.testing.assert_close(flat_v[slot], v[row])
    written = {0, 5, 15}
    untouched = [s for s in range(16) if s not in written]
    assert flat_k[untouched].abs().sum() == 0 and flat_v[untouched].abs().sum() == 0


def test_store_kvcache_all_skipped_changes_nothing() -> None:
    k_cache, v_cache = _caches()
    k_cache.normal_()
    before = k_cache.clone()
    store_kvcache_torch(torch.randn(3, 2, 8), torch.randn(3, 2, 8), k_cache, v_cache, torch.full((3,), -1))
    torch.testing.assert_close(k_cache, before, rtol=0, atol=0)
    assert v_cache.abs().sum() == 0
    store_kvcache_torch(torch.randn(0, 2, 8), torch.randn(0, 2, 8), k_cache, v_cache, torch.zeros(0))
    torch.testing.assert_close(k_cache, before, rtol=0, atol=0)
