"""Benchmark datasets (random, Azure trace, ShareGPT), token counting and arrival schedules."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from semipd.bench.datasets import BenchRequest, PromptMaker, random_requests, sharegpt_requests, trace_requests
from semipd.bench.runner import arrival_offsets, arrival_rng, dataset_rng
from semipd.bench.tokens import HeuristicCounter, TokenizerCounter, load_counter


def test_random_requests_lengths_ids_and_determinism() -> None:
    maker = PromptMaker("ids", (1000, 2000))
    reqs = random_requests(200, 100, 20, 0.5, dataset_rng(7), maker)
    inputs = np.array([r.input_len for r in reqs])
    outputs = np.array([r.output_len for r in reqs])
    assert inputs.min() >= 50 and inputs.max() <= 150 and inputs.max() - inputs.min() > 50
    assert outputs.min() >= 10 and outputs.max() <= 30
    for r in reqs:
        assert isinstance(r.prompt, tuple) and len(r.prompt) == r.input_len
        assert 1000 <= min(r.prompt) and max(r.prompt) < 2000
    assert reqs == random_requests(200, 100, 20, 0.5, dataset_rng(7), maker)
    assert reqs != random_requests(200, 100, 20, 0.5, dataset_rng(8), maker)


def test_random_requests_fixed_lengths_and_validation() -> None:
    reqs = random_requests(5, 64, 8, 0.0, dataset_rng(0), PromptMaker())
    assert {(r.input_len, r.output_len) for r in reqs} == {(64, 8)}
    with pytest.raises(ValueError, match="range_ratio"):
        random_requests(5, 64, 8, 1.0, dataset_rng(0), PromptMaker())
    with pytest.raises(ValueError, match="input_len"):
        random_requests(5, 0, 8, 0.0, dataset_rng(0), PromptMaker())
    with pytest.raises(ValueError, match="prompt_format"):
        PromptMaker("bytes")
    with pytest.raises(ValueError, match="token_range"):
        PromptMaker("ids", (10, 10))
    with pytest.raises(ValueError, match="output_len"):
        BenchRequest("x", 1, 0)


def _word_tokenizer(tmp_path: Path) -> Path:
    """A word-level tokenizer.json: one token per whitespace-separated word."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["the cat sat on a mat"], trainer=trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


class _SplitLongWords:
    """A stand-in tokenizer: words longer than four letters are two tokens."""

    vocab_size = 50_000

    def count(self, text: str) -> int:
        return sum(1 + (len(word) > 4) for word in text.split())


def test_text_prompts_with_and_without_tokenizer() -> None:
    plain = random_requests(3, 40, 4, 0.0, dataset_rng(1), PromptMaker("text"))
    assert all(isinstance(r.prompt, str) and len(r.prompt.split()) == 40 == r.input_len for r in plain)
    counter = _SplitLongWords()
    counted = random_requests(20, 300, 4, 0.0, dataset_rng(1), PromptMaker("text", counter=counter))
    for r in counted:
        assert r.input_len == counter.count(r.prompt)  # the measured count, not the target
        assert abs(r.input_len - 300) <= 3  # corrected toward the target
        assert len(r.prompt.split()) < 300


def test_tokenizer_file_counts(tmp_path: Path) -> None:
    counter = load_counter(_word_tokenizer(tmp_path).parent)
    assert isinstance(counter, TokenizerCounter) and counter.vocab_size is not None
    assert counter.count("the cat sat on a mat") == 6
    assert load_counter(tmp_path / "tokenizer.json").count("the cat") == 2
    with pytest.raises(ValueError, match="tokenizer"):
        load_counter(tmp_path / "missing")


def test_heuristic_counter() -> None:
    counter = HeuristicCounter()
    assert counter.count("one two three") == 4  # 13 characters / 4, rounded up
    assert counter.count("a b c d e f") == 6  # six words
    assert isinstance(load_counter(None), HeuristicCounter)


def _sharegpt(tmp_path: Path) -> Path:
    long_text = "word " * 1100
    entries = [
        {"id": "ok1", "conversations": [{"from": "human", "value": "tell me about the sea " * 4},
                                        {"from": "gpt", "value": "the sea is large and deep " * 5}]},
        {"id": "ok2", "messages": [{"role": "user", "content": "write a short poem about trees"},
                                   {"role": "assistant", "content": "trees grow tall under the open sky"}]},
        {"id": "one-turn", "conversations": [{"from": "human", "value": "hello there my friend"}]},
        {"id": "short", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"id": "long", "conversations": [{"from": "human", "value": long_text},
                                         {"from": "gpt", "value": "ok ok ok ok"}]},
        {"id": "empty", "conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "a b c d e"}]},
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(entries))
    return path


def test_sharegpt_filters_and_counts(tmp_path: Path) -> None:
    path = _sharegpt(tmp_path)
    counter = HeuristicCounter()
    reqs = sharegpt_requests(path, 2, dataset_rng(0), counter)
    prompts = {r.prompt for r in reqs}
    assert prompts == {"tell me about the sea " * 4, "write a short poem about trees"}
    for r in reqs:
        assert r.input_len == counter.count(r.prompt) and r.output_len >= 4
    fixed = sharegpt_requests(path, 2, dataset_rng(0), counter, output_len=3)
    assert {r.output_len for r in fixed} == {3}
    for output_len in (None, 3):  # "hi" stays a too-short prompt even with a fixed output length
        with pytest.raises(ValueError, match="only 2 usable"):
            sharegpt_requests(path, 3, dataset_rng(0), counter, output_len=output_len)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="cannot read"):
        sharegpt_requests(bad, 1, dataset_rng(0), counter)


def test_trace_requests_follow_the_csv(azure_trace: Path) -> None:
    with azure_trace.open() as f:
        first = next(csv.DictReader(f))
    reqs = trace_requests(azure_trace, 20, dataset_rng(0), PromptMaker(), time_scale=0.5, max_output_len=50)
    assert len(reqs) == 20
    assert reqs[0].input_len == int(first["ContextTokens"]) and reqs[0].arrival_time == 0.0
    assert all(len(r.prompt) == r.input_len for r in reqs)
    assert max(r.output_len for r in reqs) <= 50
    full = trace_requests(azure_trace, 20, dataset_rng(0), PromptMaker())
    np.testing.assert_allclose([r.arrival_time for r in reqs], [0.5 * r.arrival_time for r in full])
    offsets = arrival_offsets(reqs, None, 1.0, arrival_rng(0))
    np.testing.assert_allclose(offsets, [r.arrival_time for r in reqs])


def test_arrival_offsets() -> None:
    reqs = [BenchRequest("x", 1, 1, arrival_time=t) for t in (3.0, 4.5, 7.0)]
    np.testing.assert_allclose(arrival_offsets(reqs, None, 1.0, arrival_rng(0)), [0.0, 1.5, 4.0])
    plain = [BenchRequest("x", 1, 1)] * 2000
    assert not arrival_offsets(plain, float("inf"), 1.0, arrival_rng(0)).any()
    poisson = arrival_offsets(plain, 10.0, 1.0, arrival_rng(0))
    assert poisson[0] == 0.0 and np.all(np.diff(poisson) >= 0)
    assert np.mean(np.diff(poisson)) == pytest.approx(0.1, rel=0.1)
    bursty = arrival_offsets(plain, 10.0, 0.25, arrival_rng(0))
    assert np.std(np.diff(bursty)) > 1.5 * np.std(np.diff(poisson))
    with pytest.raises(ValueError, match="trace"):
        arrival_offsets(plain, None, 1.0, arrival_rng(0))
