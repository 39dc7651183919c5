"""The engine end to end on CPU: offline generation, equality with transformers' greedy
`generate`, chunked prefill, preemption, abort, stop conditions, metrics, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_model_helpers import hf_model, random_prompt, save_hf

from semipd.engine import LLM, Engine, EngineConfig, SamplingParams, StepError

GREEDY = SamplingParams(temperature=0.0, max_tokens=12)


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory: pytest.TempPathFactory):
    hf = hf_model("llama3")
    return hf, save_hf(hf, tmp_path_factory.mktemp("llama3"))


@pytest.fixture(scope="module")
def tiny() -> LLM:
    return LLM("tiny-llama", load_format="dummy", device="cpu")


def _prompts() -> list[list[int]]:
    return [random_prompt(n, seed=n) for n in (5, 31, 12, 1, 47)]


def _tokens(llm: LLM, prompts, params=GREEDY) -> list[list[int]]:
    return [o.token_ids for o in llm.generate(prompts, params)]


def test_generate_with_tiny_preset(tiny: LLM) -> None:
    outs = tiny.generate(["hello world", [256, 1, 2, 3]], SamplingParams(temperature=0.0, max_tokens=9))
    assert [len(o.token_ids) for o in outs] == [9, 9]
    assert all(o.finish_reason == "length" for o in outs)
    assert outs[0].prompt_token_ids == tiny.tokenizer.encode("hello world")
    assert outs[0].text == tiny.tokenizer.decode(outs[0].token_ids)
    assert tiny.generate("hello world", SamplingParams(temperature=0.0, max_tokens=9))[0].token_ids == outs[0].token_ids
    assert not tiny.engine.has_unfinished()
    assert tiny.engine.allocator.num_free == tiny.engine.allocator.num_blocks


def test_greedy_equals_transformers_generate(hf_pair) -> None:
    hf, path = hf_pair
    llm = LLM(str(path), device="cpu")
    prompts = _prompts()
    ours = _tokens(llm, prompts, SamplingParams(temperature=0.0, max_tokens=10))
    for prompt, got in zip(prompts, ours, strict=True):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False)[0, len(prompt):].tolist()
        assert got == ref


def test_chunked_prefill_and_eager_give_the_same_tokens(hf_pair) -> None:
    _, path = hf_pair
    prompts = _prompts()
    reference = _tokens(LLM(str(path), device="cpu"), prompts)
    assert _tokens(LLM(str(path), device="cpu", max_num_batched_tokens=8), prompts) == reference
    assert _tokens(LLM(str(path), device="cpu", enforce_eager=True), prompts) == reference


def test_preemption_under_a_tiny_kv_pool_gives_the_same_tokens(hf_pair) -> None:
    _, path = hf_pair
    prompts = [random_prompt(n, seed=100 + n) for n in (9, 14, 6, 11)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    reference = _tokens(LLM(str(path), device="cpu"), prompts, params)
    small = LLM(str(path), device="cpu", block_size=4, num_kv_blocks=16, kv_watermark=0.0)
    assert _tokens(small, prompts, params) == reference
    assert small.engine.num_preemptions > 0
    assert small.engine.allocator.num_free == 16


def test_seeded_sampling_does_not_depend_on_the_batch(tiny: LLM) -> None:
    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=50, seed=11, max_tokens=10)
    alone = _tokens(tiny, [[256, 5, 6]], params)[0]
    together = _tokens(tiny, [[256, 9], [256, 5, 6], [256, 7, 7, 7]], params)[1]
    assert alone == together


def test_abort_frees_blocks(tiny: LLM) -> None:
    engine = tiny.engine
    free = engine.allocator.num_free
    for i in range(3):
        engine.add_request(f"a{i}", random_prompt(40, seed=i), SamplingParams(max_tokens=50))
    engine.step()
    engine.step()
    assert engine.allocator.num_free < free
    engine.abort("a1")
    assert engine.num_unfinished == 2
    engine.step()
    engine.abort("a0")
    engine.abort("a2")
    engine.abort("unknown")
    assert not engine.has_unfinished()
    assert engine.allocator.num_free == free
    assert engine.metrics_collector.get_stats()["num_aborted_total"] == 3


def test_stop_strings_cut_the_text(tiny: LLM) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=40)
    full = tiny.generate("stop strings", params)[0]
    text = full.text
    stop = next(c for c in text[1:] if c != "\ufffd")
    cut = text.index(stop)
    streamed = []
    out = tiny.generate("stop strings", SamplingParams(temperature=0.0, max_tokens=40, stop=[stop]),
                        on_output=lambda o: streamed.append(o.new_text))[0]
    assert out.finish_reason == "stop"
    assert out.text == text[:cut] == "".join(streamed)
    assert out.token_ids == full.token_ids[:len(out.token_ids)] and len(out.token_ids) < 40


def test_stop_token_ids_eos_and_ignore_eos(hf_pair, tmp_path: Path) -> None:
    hf, _ = hf_pair
    prompt = random_prompt(7, seed=3)
    free = LLM(save_hf(hf, tmp_path / "a"), device="cpu").generate([prompt], SamplingParams(
        temperature=0.0, max_tokens=12, ignore_eos=True))[0].token_ids
    eos = free[4]
    first = free.index(eos)
    d = save_hf(hf, tmp_path / "b")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "eos_token_id": eos}))
    llm = LLM(str(d), device="cpu")
    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=12))[0]
    assert out.token_ids == free[:first + 1] and out.finish_reason == "stop"
    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))[0]
    assert out.token_ids == free and out.finish_reason == "length"
    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True,
                                                stop_token_ids=[free[2]]))[0]
    assert out.token_ids == free[:free.index(free[2]) + 1] and out.finish_reason == "stop"


def test_max_model_len(tiny: LLM) -> None:
    llm = LLM("tiny-llama", load_format="dummy", device="cpu", max_model_len=16)
    out = llm.generate([list(range(10))], SamplingParams(max_tokens=100, ignore_eos=True))[0]
    assert len(out.token_ids) == 6 and out.finish_reason == "length"
    with pytest.raises(ValueError, match="max_model_len is 16"):
        llm.generate([list(range(16))])
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings"):
        LLM("tiny-llama", load_format="dummy", device="cpu", max_model_len=4096)


def test_invalid_requests(tiny: LLM) -> None:
    with pytest.raises(ValueError, match="empty"):
        tiny.generate([[]])
    with pytest.raises(ValueError, match=r"\[0, 512\)"):
        tiny.generate([[1, 512]])
    tiny.engine.add_request("dup", [1, 2], SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="already running"):
        tiny.engine.add_request("dup", [1, 2], SamplingParams(max_tokens=2))
    tiny.engine.abort("dup")


def test_modes_and_config_validation() -> None:
    with pytest.raises(ValueError, match=r"mode 'pd' is not available.*\['unified', 'semi-pd'\]"):
        EngineConfig(model="tiny-llama", mode="pd")
    with pytest.raises(ValueError, match="create_engine"):
        Engine(EngineConfig(model="tiny-llama", load_format="dummy", device="cpu", mode="semi-pd"))
    with pytest.raises(ValueError, match="block_size"):
        EngineConfig(model="tiny-llama", block_size=0)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        EngineConfig(model="tiny-llama", gpu_memory_utilization=1.5)


def test_metrics_and_status(tiny: LLM) -> None:
    engine = Engine(EngineConfig(model="tiny-qwen3", load_format="dummy", device="cpu", num_kv_blocks=64))
    for i in range(4):
        engine.add_request(f"m{i}", random_prompt(10 + i, seed=i), SamplingParams(max_tokens=5, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    window = engine.metrics_collector.get_current_window_metrics()
    assert window.num_completed == 4 and window.num_ttft_samples == 4 and window.num_tpot_samples == 4
    rec = engine.metrics_collector.get_request("m2")
    # overlapped scheduling launches the first decode step before the first token is read back
    assert rec.arrival_time <= rec.prefill_start_time <= min(rec.first_token_time, rec.decode_start_time)
    assert rec.decode_start_time <= rec.completion_time and rec.output_length == 5
    status = engine.get_status()
    assert status["mode"] == "unified" and status["kv_cache"]["num_blocks"] == 64
    assert status["kv_cache"]["usage"] == 0 and status["num_running"] == 0


def test_failed_step_aborts_its_batch(tiny: LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = tiny.engine
    engine.add_request("f0", [1, 2, 3], SamplingParams(max_tokens=5))
    engine.add_request("f1", [4, 5], SamplingParams(max_tokens=5))

    def boom(batch, *args, **kwargs):
        raise RuntimeError("device fell over")

    monkeypatch.setattr(engine.runner, "launch", boom)
    with pytest.raises(StepError, match="device fell over") as e:
        engine.step()
    assert sorted(e.value.rids) == ["f0", "f1"]
    assert not engine.has_unfinished()
    assert engine.allocator.num_free == engine.allocator.num_blocks


def test_unified_warm_up_runs_prefill_and_mixed_shapes_and_returns_every_block(tiny: LLM) -> None:
    from semipd.engine.runtime.warm_up import warm_up_unified
    from semipd.sched import BlockAllocator

    engine = tiny.engine
    allocator = BlockAllocator(engine.kv_cache.num_blocks, engine.config.block_size)
    seconds, batches = warm_up_unified(engine.runner, allocator, engine.model_config.vocab_size, 600, 16,
                                       engine.max_model_len)
    # three prefill shapes (several sequences; one prompt in two chunks), then mixed batches of
    # decode sizes 1, 8 and 15 at contexts 64, 1024 and 2046, each beside a 300-token chunk
    assert batches == 3 + 9 and seconds > 0
    assert allocator.num_free == allocator.num_blocks
    allocator.check_consistency()
