"""Our model, loaded from a saved transformers checkpoint, against transformers itself (CPU, fp32):
logits through batched prefill, chunked prefill over a cached prefix, and decode; greedy tokens."""

from __future__ import annotations

import pytest
import torch
from test_model_helpers import Blocks, hf_model, make_request, random_prompt, save_hf

from semipd.engine.models.loader import load_model
from semipd.engine.runtime.kv_cache import KVCache, KVCacheSpec
from semipd.engine.runtime.model_runner import ModelRunner
from semipd.sched.batch import Batch, PrefillChunk
from semipd.sched.request import Request

ARCHS = ["llama", "llama3", "qwen2", "qwen3", "mistral"]
BLOCK = 4
TOL = 1e-4


@pytest.fixture(scope="module", params=ARCHS)
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    hf = hf_model(request.param)
    ours = load_model(save_hf(hf, tmp_path_factory.mktemp(request.param)))
    return hf, ours


def _runner(model) -> ModelRunner:
    spec = KVCacheSpec.for_model(model.config, BLOCK, torch.float32)
    return ModelRunner(model, KVCache(spec, 128, "cpu"))


@torch.inference_mode()
def _all_logits(runner: ModelRunner, batch: Batch) -> torch.Tensor:
    """Logits of every row of the flattened batch."""
    prepared = runner.prepare(batch)
    return runner.model.compute_logits(runner.forward(prepared))


@torch.inference_mode()
def _hf_logits(hf, tokens: list[int]) -> torch.Tensor:
    return hf(torch.tensor([tokens])).logits[0].float()


def _append(req: Request, token: int, blocks: Blocks) -> None:
    """Account a sampled token the way the scheduler does, and give it a slot."""
    req.num_computed_tokens = req.num_tokens
    req.append_token(token)
    blocks.give(req, req.num_tokens, BLOCK)


def test_config_flags_follow_architecture(pair) -> None:
    hf, ours = pair
    cfg = ours.config
    assert cfg.qk_norm == (hf.config.model_type == "qwen3")
    assert cfg.qkv_bias == (hf.config.model_type == "qwen2")
    assert cfg.tie_word_embeddings == bool(hf.config.tie_word_embeddings)
    if cfg.tie_word_embeddings:
        assert ours.lm_head.weight.data_ptr() == ours.model.embed_tokens.weight.data_ptr()


def test_batched_prefill_of_different_lengths(pair) -> None:
    hf, ours = pair
    runner, blocks = _runner(ours), Blocks(128)
    prompts = [random_prompt(n, seed=n) for n in (1, 7, 23, 16)]
    reqs = [make_request(f"r{i}", p) for i, p in enumerate(prompts)]
    for r in reqs:
        blocks.give(r, r.num_prompt_tokens, BLOCK)
    logits = _all_logits(runner, Batch(prefills=[PrefillChunk(r, 0, r.num_prompt_tokens, True) for r in reqs]))
    rows = 0
    for p in prompts:
        torch.testing.assert_close(logits[rows:rows + len(p)], _hf_logits(hf, p), atol=TOL, rtol=0)
        rows += len(p)


def test_chunked_prefill_over_cached_prefix(pair) -> None:
    hf, ours = pair
    runner, blocks = _runner(ours), Blocks(128, seed=1)
    long, short = random_prompt(30, seed=3), random_prompt(5, seed=4)
    a, b = make_request("a", long), make_request("b", short)
    blocks.give(a, 13, BLOCK)
    _all_logits(runner, Batch(prefills=[PrefillChunk(a, 0, 13, False)]))
    a.num_computed_tokens = 13
    blocks.give(a, 30, BLOCK)
    blocks.give(b, 5, BLOCK)
    logits = _all_logits(runner, Batch(prefills=[PrefillChunk(b, 0, 5, True), PrefillChunk(a, 13, 17, True)]))
    torch.testing.assert_close(logits[:5], _hf_logits(hf, short), atol=TOL, rtol=0)
    torch.testing.assert_close(logits[5:], _hf_logits(hf, long)[13:], atol=TOL, rtol=0)


def test_decode_steps_and_mixed_batch(pair) -> None:
    hf, ours = pair
    runner, blocks = _runner(ours), Blocks(128, seed=2)
    seqs = [random_prompt(n, seed=10 + n) for n in (3, 9, 17)]
    reqs = [make_request(f"d{i}", p) for i, p in enumerate(seqs)]
    for r in reqs[:2]:
        blocks.give(r, r.num_prompt_tokens, BLOCK)
    _all_logits(runner, Batch(prefills=[PrefillChunk(r, 0, r.num_prompt_tokens, True) for r in reqs[:2]]))
    for step in range(6):
        new = [(step * 31 + 7 * i) % 512 for i in range(2)]
        for r, t, s in zip(reqs[:2], new, seqs[:2], strict=True):
            _append(r, t, blocks)
            s.append(t)
        if step == 3:  # a mixed batch: a third request prefills beside the decodes
            third = reqs[2]
            blocks.give(third, third.num_prompt_tokens, BLOCK)
            batch = Batch(prefills=[PrefillChunk(third, 0, third.num_prompt_tokens, True)], decodes=reqs[:2])
            logits = _all_logits(runner, batch)
            torch.testing.assert_close(logits[:17], _hf_logits(hf, seqs[2]), atol=TOL, rtol=0)
            logits = logits[17:]
        else:
            logits = _all_logits(runner, Batch(decodes=reqs[:2]))
        for row, s in enumerate(seqs[:2]):
            torch.testing.assert_close(logits[row], _hf_logits(hf, s)[-1], atol=TOL, rtol=0)


def test_greedy_tokens_equal_hf_argmax(pair) -> None:
    hf, ours = pair
    runner, blocks = _runner(ours), Blocks(128, seed=3)
    prompts = [random_prompt(n, seed=20 + n) for n in (6, 11)]
    reqs = [make_request(f"g{i}", p) for i, p in enumerate(prompts)]
    for r in reqs:
        blocks.give(r, r.num_prompt_tokens, BLOCK)
    batch = Batch(prefills=[PrefillChunk(r, 0, r.num_prompt_tokens, True) for r in reqs])
    for _ in range(8):
        tokens = runner.run(batch)
        for r, t in zip(reqs, tokens, strict=True):
            _append(r, t, blocks)
        batch = Batch(decodes=reqs)
    for p, r in zip(prompts, reqs, strict=True):
        seq = list(p)
        for _ in range(8):
            seq.append(int(_hf_logits(hf, seq)[-1].argmax()))
        assert r.output_token_ids == seq[len(p):]
