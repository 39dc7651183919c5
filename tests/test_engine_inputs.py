"""Step inputs on CPU: the persistent block table (`RequestRows`), host arrays of mixed batches
against a direct per-token construction, the packed host-to-device copy, and decode steps
through the `GraphRunner` buffers (bucket padding, sampling in the step) against eager runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_model_helpers import Blocks, hf_model, make_request, random_prompt, save_hf

from semipd.engine.models.loader import load_model
from semipd.engine.runtime.batch_inputs import RequestRows, build_host_batch, padded_token_buckets, padded_token_count
from semipd.engine.runtime.cuda_graphs import GraphRunner
from semipd.engine.runtime.kv_cache import KVCache, KVCacheSpec
from semipd.engine.runtime.model_runner import ModelRunner
from semipd.engine.runtime.staging import Staging, packed_layout
from semipd.engine.sampling_params import SamplingParams
from semipd.sched.batch import Batch, PrefillChunk

BS = 4


def _decoding(rid: str, n_prompt: int, n_out: int, blocks: Blocks, params: SamplingParams | None = None,
              seed: int = 0):
    req = make_request(rid, random_prompt(n_prompt, seed=n_prompt + n_out), params, seed=seed)
    for t in range(n_out):
        req.append_token(t + 1)
    req.num_computed_tokens = req.num_tokens - 1
    blocks.give(req, req.num_tokens, BS)
    return req


def test_rows_follow_growth_replacement_and_reuse() -> None:
    rows = RequestRows(vocab_size=512, rows=2, width=2)
    blocks = Blocks(64)
    a, b, c = (_decoding(r, 5, 1, blocks) for r in "abc")
    row_ids, counts, last, _ = rows.gather([a, b])
    assert counts.tolist() == [6, 6] and last == [1, 1]
    assert rows.table[row_ids[0], :2].tolist() == a.block_ids
    blocks.give(a, 13, BS)  # grows in place past the table width
    row_ids, _, _, _ = rows.gather([a])
    assert rows.table[row_ids[0], :4].tolist() == a.block_ids and rows.table.shape[1] >= 4
    a.block_ids = [60, 61]  # replaced, as after a preemption, same length as before
    row_ids, _, _, _ = rows.gather([a])
    assert rows.table[row_ids[0], :2].tolist() == [60, 61]
    # Two rows: c takes the row of b, which was absent from the last call.
    row_ids, _, _, _ = rows.gather([a, c])
    assert len(rows) == 2 and rows.table[row_ids[1], :2].tolist() == c.block_ids
    # Three requests in one call: the table grows.
    row_ids, _, _, _ = rows.gather([a, b, c])
    assert len(set(row_ids.tolist())) == 3 and rows.table[row_ids[1], :2].tolist() == b.block_ids


def _reference(batch: Batch) -> dict[str, list]:
    """The layout of `semipd.engine.runtime.batch_inputs`, built token by token."""
    ids, pos, slots, seq_lens, cu, rows = [], [], [], [], [0], []
    spans = [(c.request, c.start, c.end, c.is_last) for c in batch.prefills]
    spans += [(r, r.num_tokens - 1, r.num_tokens, True) for r in batch.decodes]
    for req, start, end, sampled in spans:
        for p in range(start, end):
            ids.append(req.token_ids(p, p + 1)[0])
            pos.append(p)
            slots.append(req.block_ids[p // BS] * BS + p % BS)
        seq_lens.append(end)
        cu.append(cu[-1] + end - start)
        if sampled:
            rows.append(cu[-1] - 1)
    return {"input_ids": ids, "positions": pos, "slot_mapping": slots, "seq_lens": seq_lens, "cu_seqlens_q": cu,
            "sample_rows": rows}


def test_host_batch_of_a_mixed_batch_matches_the_token_layout() -> None:
    blocks = Blocks(200, seed=3)
    fresh = make_request("fresh", random_prompt(11, seed=1))
    part = make_request("part", random_prompt(30, seed=2), SamplingParams(temperature=0.7, top_k=5, max_tokens=9),
                        seed=-3)
    blocks.give(fresh, 7, BS)
    blocks.give(part, 30, BS)
    part.num_computed_tokens = 13
    decodes = [_decoding(f"d{i}", 3 + 5 * i, 2 + i, blocks, SamplingParams(temperature=0.0, top_p=0.5), seed=i)
               for i in range(3)]
    batch = Batch(prefills=[PrefillChunk(fresh, 0, 7, False), PrefillChunk(part, 13, 17, True)], decodes=decodes)
    rows = RequestRows(vocab_size=512)
    hb = build_host_batch(batch, rows, BS)
    for name, expected in _reference(batch).items():
        assert getattr(hb, name).tolist() == expected, name
    assert hb.sampled == [part, *decodes] and not hb.is_decode
    assert (hb.max_seqlen_q, hb.max_seqlen_k) == (17, 30)
    for i, req in enumerate([fresh, part, *decodes]):
        assert hb.block_tables[i, :len(req.block_ids)].tolist() == req.block_ids
    s = hb.sampling
    assert s.temperatures.tolist() == pytest.approx([0.7, 0, 0, 0]) and s.top_ks.tolist() == [5, 512, 512, 512]
    assert s.seeds.tolist() == [-3, 0, 1, 2] and s.steps.tolist() == [0, 2, 3, 4]
    assert s.use_top_k_top_p and not s.all_greedy
    only = build_host_batch(Batch(decodes=decodes), rows, BS)
    assert only.is_decode and only.sampling.all_greedy and not only.sampling.use_top_k_top_p
    for name, expected in _reference(Batch(decodes=decodes)).items():
        assert getattr(only, name).tolist() == expected, name
    with pytest.raises(ValueError, match="empty"):
        build_host_batch(Batch(), rows, BS)


def test_tiny_temperatures_make_a_greedy_batch() -> None:
    blocks = Blocks(64, seed=1)
    decodes = [_decoding(f"t{i}", 5, 2, blocks, SamplingParams(temperature=1e-40, top_p=0.5), seed=i) for i in range(2)]
    s = build_host_batch(Batch(decodes=decodes), RequestRows(vocab_size=512), BS).sampling
    assert s.all_greedy and not s.use_top_k_top_p


def test_padded_prefill_batches_keep_their_layout_and_pad_with_unwritten_rows() -> None:
    blocks = Blocks(200, seed=5)
    a = make_request("a", random_prompt(11, seed=1))
    b = make_request("b", random_prompt(300, seed=2))
    blocks.give(a, 11, BS)
    blocks.give(b, 300, BS)
    b.num_computed_tokens = 40
    batch = Batch(prefills=[PrefillChunk(a, 0, 11, True), PrefillChunk(b, 40, 260, True)])
    plain = build_host_batch(batch, RequestRows(vocab_size=512), BS)
    padded = build_host_batch(batch, RequestRows(vocab_size=512), BS, pad_prefill=True)
    assert len(plain.input_ids) == 271 and len(padded.input_ids) == padded_token_count(271) == 272
    for name in ("input_ids", "positions", "slot_mapping"):
        assert getattr(padded, name)[:271].tolist() == getattr(plain, name).tolist()
    assert padded.slot_mapping[271:].tolist() == [-1] and padded.cu_seqlens_q.tolist() == plain.cu_seqlens_q.tolist()
    assert padded.sample_rows.tolist() == plain.sample_rows.tolist()
    decodes = [_decoding("d", 5, 2, blocks)]  # mixed batches are never padded (decode rows sit at the end)
    mixed = Batch(prefills=[PrefillChunk(a, 0, 11, True)], decodes=decodes)
    assert len(build_host_batch(mixed, RequestRows(vocab_size=512), BS, pad_prefill=True).input_ids) == 12


@pytest.mark.parametrize("n", [1, 15, 16, 17, 255, 256, 257, 1000, 2049, 4096, 8191])
def test_padded_token_count_is_a_bucket_within_one_sixteenth(n: int) -> None:
    padded = padded_token_count(n)
    assert n <= padded and padded - n < (16 if n <= 256 else n / 16) and padded in padded_token_buckets(8192)
    assert len(padded_token_buckets(4096)) == 80


def test_staging_packs_dtypes_into_one_buffer() -> None:
    assert packed_layout([3, 16, 17, 0, 8]) == ([0, 16, 32, 64, 64], 80)
    arrays = [np.arange(5, dtype=np.int64), np.arange(6, dtype=np.int32).reshape(2, 3),
              np.array([0.5, -1.0], dtype=np.float32), np.zeros(0, dtype=np.int64)]
    staging = Staging(torch.device("cpu"))
    out = staging.to_device(arrays)
    for a, t in zip(arrays, out, strict=True):
        assert t.shape == a.shape and t.numpy().tolist() == a.tolist()
    again = staging.to_device([np.full(3, 7, dtype=np.int64)])  # the host buffer is reused
    assert again[0].tolist() == [7, 7, 7] and out[0].tolist() == [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    return load_model(str(save_hf(hf_model("llama3"), tmp_path_factory.mktemp("m"))), dtype="float32",
                      device="cpu")


def test_graph_runner_step_equals_eager(model) -> None:
    spec = KVCacheSpec.for_model(model.config, BS, model.dtype)
    cache = KVCache(spec, 256, "cpu")
    eager = ModelRunner(model, cache)
    graphed = ModelRunner(model, cache, GraphRunner(model, cache, max_num_seqs=12, max_model_len=64))
    blocks = Blocks(256, seed=5)
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.9, seed=4),
              SamplingParams(temperature=1.2, top_p=0.8), SamplingParams(temperature=0.5, top_k=3)]
    for n in (1, 3, 4, 9):  # buckets 1, 4, 4, 12: padded rows in all but the first two
        reqs = [make_request(f"r{n}-{i}", random_prompt(5 + 3 * i, seed=i), params[i % 4], seed=i) for i in range(n)]
        for r in reqs:
            blocks.give(r, r.num_prompt_tokens + 2, BS)
        eager.run(Batch(prefills=[PrefillChunk(r, 0, r.num_prompt_tokens, True) for r in reqs]))
        for r in reqs:
            r.num_computed_tokens = r.num_prompt_tokens
            r.append_token(3)
        batch = Batch(decodes=reqs)
        prepared = eager.prepare(batch)
        ref_hidden = model(prepared.input_ids, prepared.positions, cache.layers, prepared.meta)
        assert torch.allclose(graphed.forward(prepared)[:n], ref_hidden, atol=1e-5)
        # Both steps start from the same cache; padded rows must write nothing.
        before = cache.data.clone()
        want = eager.run(batch)
        after = cache.data.clone()
        cache.data.copy_(before)
        assert graphed.run(batch) == want and not graphed.last_run_graphed
        written = torch.zeros(cache.num_blocks * BS, dtype=torch.bool)
        written[prepared.meta.slot_mapping] = True
        written = written.view(1, 1, cache.num_blocks, BS, 1, 1).expand_as(cache.data)
        assert torch.equal(cache.data[~written], before[~written])
        assert torch.allclose(cache.data[written], after[written], atol=1e-5)


def test_graph_warm_up_reads_only_reset_inputs(model) -> None:
    """Regression (device-side assert on the H100): the warm-up step before each capture ran on the
    capture stream without waiting for the kernels that initialised the static buffers, and read
    stale memory from an earlier engine as token ids. `capture` now orders its stream after the
    current one, and the warm-up resets every static input first: garbage in them is harmless."""
    cache = KVCache(KVCacheSpec.for_model(model.config, BS, model.dtype), 32, "cpu")
    graphs = GraphRunner(model, cache, max_num_seqs=8, max_model_len=64)
    for name in ("input_ids", "positions", "seq_lens", "slot_mapping", "steps"):
        getattr(graphs, name).fill_(10**6)
    graphs.temperatures.fill_(float("nan"))
    graphs.block_tables.fill_(10**6)
    before = cache.data.clone()
    graphs.warm_up(8)
    assert torch.equal(cache.data, before)  # padding rows write no K/V
    assert graphs.tokens[:8].tolist() == graphs.logits[:8].float().argmax(-1).tolist()


def test_skinny_plan_without_tuning_is_f_linear() -> None:
    from semipd.engine.runtime.kernels.skinny_linear import SkinnyLinearPlan, row_bucket

    assert [row_bucket(r) for r in (1, 2, 3, 5, 8, 9, 16)] == [1, 2, 4, 8, 8, 16, 16]
    with pytest.raises(ValueError):
        row_bucket(17)
    plan = SkinnyLinearPlan()
    x, w, b = torch.randn(3, 8), torch.randn(5, 8), torch.randn(5)
    assert torch.allclose(plan.linear(x, w, b), torch.nn.functional.linear(x, w, b))
    out = torch.empty(3, 5)
    assert plan.linear(x, w, b, out=out) is out and torch.allclose(out, x @ w.t() + b)
    assert torch.allclose(plan.linear(x, w, out=torch.empty(3, 5)), x @ w.t())
