"""Sampler: greedy is argmax, top-k / top-p masks, seeded reproducibility independent of the
batch, and sampled frequencies that follow softmax(logits / temperature)."""

from __future__ import annotations

import pytest
import torch

from semipd.engine.runtime.sampler import (
    Sampler,
    SamplingTensors,
    apply_top_k_top_p,
    hash32,
    sample_tokens_torch,
    uniform_noise,
)
from semipd.engine.sampling_params import GREEDY_TEMPERATURE, SamplingParams

V = 50


def _tensors(n: int, temperature: float = 1.0, top_k: int = -1, top_p: float = 1.0, seeds=None, steps=None,
             temps=None) -> SamplingTensors:
    return SamplingTensors.build(
        temperatures=temps if temps is not None else [temperature] * n, top_ks=[top_k] * n, top_ps=[top_p] * n,
        seeds=seeds if seeds is not None else list(range(n)), steps=steps if steps is not None else [0] * n,
        vocab_size=V, device=torch.device("cpu"))


def _logits(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, V, generator=torch.Generator().manual_seed(seed)) * 2


def test_greedy_equals_argmax() -> None:
    logits = _logits(16)
    t = _tensors(16, temperature=0.0)
    assert t.all_greedy
    assert torch.equal(Sampler()(logits, t), logits.argmax(-1))


def test_greedy_rows_in_a_mixed_batch() -> None:
    logits = _logits(8)
    temps = [0.0, 1.0] * 4
    out = Sampler()(logits, _tensors(8, temps=temps))
    assert torch.equal(out[::2], logits[::2].argmax(-1))


def test_top_k_keeps_only_the_k_best() -> None:
    logits = _logits(4).repeat(100, 1)
    out = Sampler()(logits, _tensors(400, top_k=3, seeds=list(range(400))))
    top3 = logits.topk(3, dim=-1).indices
    assert (out[:, None] == top3).any(dim=-1).all()
    assert len(set(out[:4 * 25:4].tolist())) > 1  # it still samples among them


def test_top_p_mask() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    masked = apply_top_k_top_p(logits, torch.tensor([4]), torch.tensor([0.75]))
    assert torch.isfinite(masked[0, :2]).all() and torch.isinf(masked[0, 2:]).all()
    masked = apply_top_k_top_p(logits, torch.tensor([4]), torch.tensor([0.8]))  # 0.5 + 0.3 reaches 0.8
    assert torch.isfinite(masked[0, :2]).all() and torch.isinf(masked[0, 2:]).all()
    masked = apply_top_k_top_p(logits, torch.tensor([4]), torch.tensor([0.81]))
    assert torch.isfinite(masked[0, :3]).all() and torch.isinf(masked[0, 3]).all()
    masked = apply_top_k_top_p(logits, torch.tensor([4]), torch.tensor([0.01]))  # the best token always stays
    assert torch.isfinite(masked[0, 0]) and torch.isinf(masked[0, 1:]).all()
    # top-p applies to what top-k kept, renormalised: top-2 leaves 0.625 / 0.375.
    masked = apply_top_k_top_p(logits, torch.tensor([2]), torch.tensor([0.6]))
    assert torch.isfinite(masked[0, 0]) and torch.isinf(masked[0, 1:]).all()


def test_seeded_rows_do_not_depend_on_the_batch() -> None:
    logits = _logits(1).repeat(6, 1)
    sampler = Sampler()
    a = sampler(logits, _tensors(6, seeds=[7, 7, 8, 9, 7, 10], steps=[0, 1, 0, 0, 0, 0]))
    b = sampler(logits[:1], _tensors(1, seeds=[7], steps=[0]))
    assert a[0] == a[4] == b[0]
    steps = sampler(logits[:1].repeat(40, 1), _tensors(40, seeds=[7] * 40, steps=list(range(40))))
    assert len(set(steps.tolist())) > 3  # the step changes the draw


def test_negative_and_huge_seeds() -> None:
    t = _tensors(3, seeds=[-1, 2**64 + 5, 2**63 - 1])
    assert t.seeds.dtype == torch.int64
    Sampler()(_logits(3), t)


def test_temperature_frequencies_follow_softmax() -> None:
    n = 20000
    base = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0] + [-30.0] * (V - 5))
    sampler = Sampler()
    for temp in (0.5, 1.0, 2.0):
        out = sampler(base.repeat(n, 1), _tensors(n, temperature=temp, seeds=list(range(n))))
        freq = torch.bincount(out, minlength=V)[:5].float() / n
        expected = torch.softmax(base / temp, dim=-1)[:5]
        assert torch.allclose(freq, expected, atol=0.015), (temp, freq, expected)


def test_noise_is_uniform_and_hash_is_a_bijection_sample() -> None:
    u = uniform_noise(torch.arange(64), torch.zeros(64, dtype=torch.int64), 1000)
    assert 0 < u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01
    x = torch.arange(100000, dtype=torch.int64)
    assert hash32(x).unique().numel() == x.numel()


@pytest.mark.parametrize("top_k", [0, -1, V, V + 10])
def test_top_k_disabled_values(top_k: int) -> None:
    assert not _tensors(2, top_k=top_k).use_top_k_top_p


@pytest.mark.parametrize("temperature", [1e-40, 1e-30, 1e-6])
def test_tiny_temperature_is_greedy(temperature: float) -> None:
    logits = _logits(32, seed=3) * 10  # many positive logits: logits / T would overflow to +inf ties
    for top_k, top_p in ((-1, 1.0), (5, 0.9)):
        t = _tensors(32, temperature=temperature, top_k=top_k, top_p=top_p)
        assert t.all_greedy
        assert torch.equal(Sampler()(logits, t), logits.argmax(-1))
    temps = torch.full((32,), temperature)
    zeros = torch.zeros(32, dtype=torch.int64)
    assert torch.equal(sample_tokens_torch(logits, temps, torch.arange(32), zeros), logits.argmax(-1))


@pytest.mark.parametrize("top_p", [1e-300, 1e-45, 1e-8])
def test_tiny_top_p_keeps_the_most_likely_token(top_p: float) -> None:
    logits = _logits(32, seed=4)
    t = _tensors(32, temperature=1.0, top_p=top_p)
    assert t.use_top_k_top_p
    assert torch.equal(Sampler()(logits, t), logits.argmax(-1))
    masked = apply_top_k_top_p(logits, torch.full((32,), V), torch.full((32,), top_p))
    assert torch.equal(torch.isfinite(masked), logits == logits.max(-1, keepdim=True).values)


def test_greedy_threshold_of_the_params() -> None:
    assert SamplingParams(temperature=1e-40).is_greedy
    assert SamplingParams(temperature=GREEDY_TEMPERATURE / 2).is_greedy
    assert not SamplingParams(temperature=GREEDY_TEMPERATURE).is_greedy
