"""Piecewise graphs on CPU: the token buckets, the padded segment chain over the static buffers
against the model's own forward (mixed batches, q-norm models), padding that writes no K/V, and
the unified engine with and without piecewise graphs producing the same tokens. CUDA capture and
replay are checked on the GPU by benchmarks/check_piecewise_graphs.py."""

from __future__ import annotations

import pytest
import torch
from test_model_helpers import Blocks, hf_model, make_request, random_prompt, save_hf

from semipd.engine import LLM, SamplingParams
from semipd.engine.engine_config import EngineConfig
from semipd.engine.models.loader import load_model
from semipd.engine.runtime.kv_cache import KVCache, KVCacheSpec
from semipd.engine.runtime.model_runner import ModelRunner
from semipd.engine.runtime.piecewise_graphs import PiecewiseGraphs, token_buckets
from semipd.sched.batch import Batch, PrefillChunk

BS = 4


def test_token_buckets_cover_every_size_with_bounded_padding() -> None:
    buckets = token_buckets(2048)
    assert buckets[0] == 16 and buckets[-1] == 2048 and buckets == sorted(set(buckets))
    pad = {t: next(b for b in buckets if b >= t) - t for t in range(1, 2049)}
    assert max(pad[t] for t in range(1, 257)) == 15
    assert max(pad[t] / t for t in range(256, 2049)) <= 0.125
    assert token_buckets(100)[-1] == 100 and token_buckets(5) == [5]
    with pytest.raises(ValueError, match="max_tokens"):
        token_buckets(0)


@pytest.fixture(scope="module", params=["llama3", "qwen3"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    return load_model(str(save_hf(hf_model(request.param), tmp_path_factory.mktemp("m"))), dtype="float32",
                      device="cpu")


def _mixed_batch(blocks: Blocks, eager: ModelRunner, n_decodes: int, chunk: int) -> Batch:
    """Decodes of `n_decodes` prefilled requests plus a prefill chunk of `chunk` tokens of a new one."""
    decodes = []
    for i in range(n_decodes):
        r = make_request(f"d{i}", random_prompt(6 + i, seed=i), seed=i)
        blocks.give(r, r.num_prompt_tokens + 2, BS)
        eager.run(Batch(prefills=[PrefillChunk(r, 0, r.num_prompt_tokens, True)]))
        r.num_computed_tokens = r.num_prompt_tokens
        r.append_token(5 + i)
        decodes.append(r)
    new = make_request("p", random_prompt(chunk + 7, seed=99), seed=9)
    blocks.give(new, chunk, BS)
    return Batch(prefills=[PrefillChunk(new, 0, chunk, False)], decodes=decodes)


@pytest.mark.parametrize(("n_decodes", "chunk"), [(0, 16), (3, 10), (5, 29)])
def test_padded_segments_equal_the_forward_and_write_only_real_slots(model, n_decodes: int, chunk: int) -> None:
    cache = KVCache(KVCacheSpec.for_model(model.config, BS, model.dtype), 128, "cpu")
    eager = ModelRunner(model, cache)
    pieces = PiecewiseGraphs(model, cache, max_tokens=64)
    pieces.input_ids.fill_(7)  # stale inputs past the batch must not matter
    pieces.positions.fill_(3)
    batch = _mixed_batch(Blocks(128, seed=n_decodes), eager, n_decodes, chunk)
    prepared = eager.prepare(batch)
    t = prepared.input_ids.shape[0]
    assert pieces.bucket_for(t) > t or t == 16
    before = cache.data.clone()
    want = model(prepared.input_ids, prepared.positions, cache.layers, prepared.meta)
    after = cache.data.clone()
    cache.data.copy_(before)
    hidden, graphed = pieces.forward(prepared.input_ids, prepared.positions, prepared.meta)
    assert not graphed and hidden.shape == want.shape
    assert torch.allclose(hidden, want, atol=1e-5)
    assert torch.equal(cache.data, after)  # the padded rows (slot -1) wrote nothing


def test_runner_uses_the_pieces_up_to_their_largest_bucket(model) -> None:
    cache = KVCache(KVCacheSpec.for_model(model.config, BS, model.dtype), 256, "cpu")
    eager = ModelRunner(model, cache)
    pieces = PiecewiseGraphs(model, cache, max_tokens=32)
    runner = ModelRunner(model, cache, piecewise=pieces)
    calls = []
    forward = pieces.forward
    pieces.forward = lambda *a, **k: calls.append(a[0].shape[0]) or forward(*a, **k)
    blocks = Blocks(256, seed=1)
    for chunk in (20, 40):  # 40 tokens: beyond the largest bucket, eager
        batch = _mixed_batch(blocks, eager, 2, chunk)
        before = cache.data.clone()
        want = eager.run(batch)
        cache.data.copy_(before)
        assert runner.run(batch) == want
    assert calls == [22]


def test_unified_engine_gives_the_same_tokens_with_and_without_pieces() -> None:
    prompts = [random_prompt(n, seed=n, vocab=256) for n in (5, 23, 40, 61)]
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    outs = []
    for max_tokens in (0, 64):
        llm = LLM(model="tiny-llama", load_format="dummy", device="cpu", dtype="float32", num_kv_blocks=256,
                  max_num_batched_tokens=64, piecewise_max_tokens=max_tokens)
        assert (llm.engine.piecewise is None) == (max_tokens == 0)
        outs.append([o.token_ids for o in llm.generate(prompts, params)])
    assert outs[0] == outs[1]


@pytest.mark.parametrize("value", [-1, 1.5, True, "64"])
def test_config_rejects_bad_piecewise_max_tokens(value) -> None:
    with pytest.raises(ValueError, match="piecewise_max_tokens"):
        EngineConfig(model="tiny-llama", piecewise_max_tokens=value)


class _FakeGraph:
    """Stands in for a captured segment on CPU: replaying it runs the segment and records which set ran."""

    def __init__(self, pieces: PiecewiseGraphs, key: str, bucket: int, i: int, log: list) -> None:
        self.replay = lambda: log.append((key, i)) or pieces._segment(i, bucket)


def test_a_layer_hook_switches_graph_sets_mid_step_and_uncaptured_sets_run_eagerly(model) -> None:
    """The Semi-PD prefill worker moves to another partition between two layers: the rest of the
    step replays that partition's set; a segment whose set was not captured runs eagerly in place."""
    cache = KVCache(KVCacheSpec.for_model(model.config, BS, model.dtype), 128, "cpu")
    eager = ModelRunner(model, cache)
    pieces = PiecewiseGraphs(model, cache, max_tokens=64)
    batch = _mixed_batch(Blocks(128, seed=3), eager, 3, 25)
    prepared = eager.prepare(batch)
    bucket = pieces.bucket_for(prepared.input_ids.shape[0])
    n = model.model.num_segments
    log: list = []
    for key in ("a", "b"):
        pieces._graphs[(key, bucket)] = [_FakeGraph(pieces, key, bucket, i, log) for i in range(n)]
    want = model(prepared.input_ids, prepared.positions, cache.layers, prepared.meta)
    hidden, graphed = pieces.forward(prepared.input_ids, prepared.positions, prepared.meta, "a",
                                     layer_hook=lambda i: "b" if i == 1 else None)
    assert graphed and torch.allclose(hidden, want, atol=1e-5)
    assert log == [("a", 0)] + [("b", i) for i in range(1, n)]
    log.clear()
    hidden, graphed = pieces.forward(prepared.input_ids, prepared.positions, prepared.meta, "a",
                                     layer_hook=lambda i: "c" if i == n - 1 else None)
    assert not graphed and torch.allclose(hidden, want, atol=1e-5)
    assert log == [("a", i) for i in range(n - 1)]
