"""The torch reference backend against a dense, slot-by-slot oracle."""

from __future__ import annotations

import pytest
import torch

from semipd.engine.runtime.attention import AttentionBackend, get_backend
from semipd.engine.runtime.attention.torch_ref import paged_decode_attention_torch, paged_prefill_attention_torch
from semipd.engine.runtime.kernels.paged_batch import PagedBatch, make_paged_batch


def _dense_oracle(batch: PagedBatch, scale: float) -> torch.Tensor:
    """Reads the whole of each sequence slot by slot (after the new K/V are stored) and
    runs plain causal attention with repeated kv heads."""
    block_size = batch.k_cache.shape[1]
    flat_k = batch.k_cache.view(-1, *batch.k_cache.shape[2:]).float()
    flat_v = batch.v_cache.view(-1, *batch.v_cache.shape[2:]).float()
    group = batch.q.shape[1] // batch.k_cache.shape[2]
    outs = []
    cu = batch.cu_seqlens_q.tolist()
    for i, seq_len in enumerate(batch.seq_lens.tolist()):
        slots = [int(batch.block_tables[i, p // block_size]) * block_size + p % block_size for p in range(seq_len)]
        k = flat_k[slots].repeat_interleave(group, dim=1)
        v = flat_v[slots].repeat_interleave(group, dim=1)
        q = batch.q[cu[i] : cu[i + 1]].float()
        q_len = q.shape[0]
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        visible = torch.arange(seq_len)[None, :] <= (seq_len - q_len + torch.arange(q_len))[:, None]
        probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        outs.append(torch.einsum("hqk,khd->qhd", probs, v))
    return torch.cat(outs).to(batch.q.dtype)


CASES = {
    "prefill_odd_lengths": ([5, 9, 1], [5, 9, 1], 4, 4),
    "chunked_prefill_with_prefix": ([13, 40, 7], [5, 3, 7], 4, 2),
    "block_boundaries": ([16, 17, 15, 32], [16, 1, 15, 16], 8, 2),
    "decode_gqa4": ([1, 16, 33, 100], [1, 1, 1, 1], 8, 2),
    "mixed_prefill_and_decode": ([30, 8, 9], [30, 1, 1], 2, 1),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_backend_matches_dense_oracle(name: str) -> None:
    seq_lens, q_lens, num_heads, num_kv_heads = CASES[name]
    batch = make_paged_batch(seq_lens, q_lens, num_heads, num_kv_heads, head_dim=16, block_size=16, seed=1)
    meta = batch.metadata()
    out = get_backend("torch").forward(batch.q, batch.k, batch.v, batch.k_cache, batch.v_cache, meta, 0.3)
    torch.testing.assert_close(out, _dense_oracle(batch, 0.3), rtol=1e-5, atol=1e-5)
    flat_k = batch.k_cache.view(-1, num_kv_heads, 16)
    torch.testing.assert_close(flat_k[batch.slot_mapping], batch.k, rtol=0, atol=0)


def test_decode_path_equals_prefill_path_and_tolerates_a_loose_bound() -> None:
    batch = make_paged_batch([3, 20, 64, 1], [0, 0, 0, 0], 8, 2, 32, block_size=8, dtype=torch.bfloat16, seed=2)
    q = torch.randn(4, 8, 32, dtype=torch.bfloat16)
    args = (q, batch.k_cache, batch.v_cache, batch.block_tables, batch.seq_lens)
    cu = torch.arange(5, dtype=torch.int32)
    via_prefill = paged_prefill_attention_torch(*args, cu, 0.2)
    torch.testing.assert_close(paged_decode_attention_torch(*args, 64, 0.2), via_prefill)
    torch.testing.assert_close(paged_decode_attention_torch(*args, 200, 0.2), via_prefill)


def test_decode_of_an_empty_sequence_is_zero() -> None:
    batch = make_paged_batch([0, 5], [0, 0], 4, 4, 16, block_size=4, seed=3)
    q = torch.randn(2, 4, 16)
    out = paged_decode_attention_torch(q, batch.k_cache, batch.v_cache, batch.block_tables, batch.seq_lens, 5, 1.0)
    assert torch.all(out[0] == 0) and torch.isfinite(out).all()


def test_long_prefill_in_query_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import semipd.engine.runtime.attention.torch_ref as torch_ref

    batch = make_paged_batch([70, 40], [50, 40], 4, 2, 16, block_size=16, seed=4)
    meta = batch.metadata()
    backend = get_backend("torch")
    backend.forward(batch.q, batch.k, batch.v, batch.k_cache, batch.v_cache, meta, 0.25)
    args = (batch.q, batch.k_cache, batch.v_cache, batch.block_tables, batch.seq_lens, batch.cu_seqlens_q, 0.25)
    whole = paged_prefill_attention_torch(*args)
    monkeypatch.setattr(torch_ref, "_SCORE_BUDGET", 4 * 70 * 7)  # 7 query rows at a time
    torch.testing.assert_close(paged_prefill_attention_torch(*args), whole)


def test_registry() -> None:
    backend = get_backend("torch")
    assert isinstance(backend, AttentionBackend) and backend.name == "torch"
    with pytest.raises(ValueError, match="unknown"):
        get_backend("no-such-backend")


def test_make_paged_batch_validates() -> None:
    with pytest.raises(ValueError):
        make_paged_batch([3], [4], 2, 2, 8, 4)
    with pytest.raises(ValueError):
        make_paged_batch([3], [1], 3, 2, 8, 4)
    with pytest.raises(ValueError):
        make_paged_batch([3, 4], [1], 2, 2, 8, 4)
