"""Batched token sampling on the device: greedy, temperature, top-k, top-p, per-request seeds.

Every row of a batch is sampled in the same few tensor operations; there is no per-request
host synchronisation. Randomness is Gumbel-max with noise that is a pure function of
(request seed, step, token id): a counter-based hash (Chris Wellons' ``lowbias32``) computed
on the device. So a seeded request draws the same tokens whatever else shares its batch,
and no ``torch.Generator`` per request is needed. Requests without a seed get a random one
when they are added (the engine does that).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from semipd.engine.runtime.kernels._dispatch import use_triton
from semipd.engine.sampling_params import GREEDY_TEMPERATURE

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for x in [0, 2**32) held in int64, without int64 overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32: a well-mixed bijection on 32-bit values (int64 tensors in [0, 2**32))."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniform_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[B, V] float32 in (0, 1), a deterministic function of (seed, step, column) for each row."""
    key = hash32((seeds & _MASK32) ^ hash32(((seeds >> 32) & _MASK32) ^ hash32(steps & _MASK32)))
    cols = hash32(torch.arange(vocab_size, device=seeds.device, dtype=torch.int64) ^ 0x9E3779B9)
    bits = hash32(key[:, None] ^ cols[None, :]) >> 8  # 24 random bits: exact in float32
    return (bits.to(torch.float32) + 0.5) * (1.0 / (1 << 24))


@dataclass
class SamplingTensors:
    """Per-row sampling parameters of one batch, on the device.

    ``use_top_k_top_p`` is decided on the host from the parameters, so batches that need no
    sort skip it without looking at device data.
    """

    temperatures: torch.Tensor
    """[B] float32; below `GREEDY_TEMPERATURE` (0 included) means greedy."""
    top_ks: torch.Tensor
    """[B] int64; values >= vocab size (or <= 0 on the host) keep all tokens."""
    top_ps: torch.Tensor
    """[B] float32 in (0, 1]."""
    seeds: torch.Tensor
    """[B] int64 (any 64-bit value)."""
    steps: torch.Tensor
    """[B] int64: index of the token being sampled (output tokens so far)."""
    all_greedy: bool
    use_top_k_top_p: bool

    @classmethod
    def build(cls, temperatures: Sequence[float], top_ks: Sequence[int], top_ps: Sequence[float],
              seeds: Sequence[int], steps: Sequence[int], vocab_size: int, device: torch.device) -> SamplingTensors:
        """Move host lists to the device in one copy (pinned on CUDA)."""
        n = len(temperatures)
        ks = [vocab_size if k <= 0 or k > vocab_size else k for k in top_ks]
        seeds64 = [(s + (1 << 63)) % (1 << 64) - (1 << 63) for s in seeds]  # any Python int into int64
        pin = device.type == "cuda"
        floats = torch.tensor([*temperatures, *top_ps], dtype=torch.float32, pin_memory=pin)
        ints = torch.tensor([*ks, *seeds64, *steps], dtype=torch.int64, pin_memory=pin)
        floats = floats.to(device, non_blocking=True)
        ints = ints.to(device, non_blocking=True)
        return cls(
            temperatures=floats[:n], top_ps=floats[n:], top_ks=ints[:n], seeds=ints[n:2 * n], steps=ints[2 * n:],
            all_greedy=all(t < GREEDY_TEMPERATURE for t in temperatures),
            use_top_k_top_p=any(t >= GREEDY_TEMPERATURE and (k < vocab_size or p < 1.0)
                                for t, k, p in zip(temperatures, ks, top_ps, strict=True)),
        )


def apply_top_k_top_p(logits: torch.Tensor, top_ks: torch.Tensor, top_ps: torch.Tensor) -> torch.Tensor:
    """Set logits outside each row's top-k, then outside its nucleus (top-p of what top-k kept), to -inf.
    The most likely token always stays, even where top-p rounds to 0 in float32."""
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(vocab, device=logits.device)[None, :]
    sorted_logits = sorted_logits.masked_fill(rank >= top_ks[:, None], float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted = ((mass_before >= top_ps[:, None]) & (rank > 0)) | (rank >= top_ks[:, None])
    drop = torch.empty_like(drop_sorted).scatter_(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _gumbel_argmax(logits: torch.Tensor, temperatures: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor,
                   top_ks: torch.Tensor | None, top_ps: torch.Tensor | None) -> torch.Tensor:
    logits = logits.float()
    greedy = logits.argmax(dim=-1)
    sampled_rows = temperatures >= GREEDY_TEMPERATURE
    temps = torch.where(sampled_rows, temperatures, torch.ones_like(temperatures))
    scaled = logits / temps[:, None]
    if top_ks is not None and top_ps is not None:
        scaled = apply_top_k_top_p(scaled, top_ks, top_ps)
    gumbel = -torch.log(-torch.log(uniform_noise(seeds, steps, logits.shape[-1])))
    sampled = (scaled + gumbel).argmax(dim=-1)
    return torch.where(sampled_rows, sampled, greedy)


def sample_tokens_torch(logits: torch.Tensor, temperatures: torch.Tensor, seeds: torch.Tensor,
                        steps: torch.Tensor) -> torch.Tensor:
    """Greedy rows (temperature below `GREEDY_TEMPERATURE`) take the argmax; the others
    ``argmax(logits / T + Gumbel noise)`` with the noise of `uniform_noise`: a sample of
    softmax(logits / T). No top-k / top-p."""
    return _gumbel_argmax(logits, temperatures, seeds, steps, None, None)


def sample_tokens(logits: torch.Tensor, temperatures: torch.Tensor, seeds: torch.Tensor,
                  steps: torch.Tensor) -> torch.Tensor:
    """`sample_tokens_torch` (same draws): one fused Triton pass over the logits on CUDA, the
    torch reference elsewhere. No host synchronisation either way (CUDA-graph safe)."""
    if use_triton(logits):
        from semipd.engine.runtime.kernels.triton_sampling import sample_tokens_triton

        return sample_tokens_triton(logits, temperatures, seeds, steps)
    return sample_tokens_torch(logits, temperatures, seeds, steps)


class Sampler:
    """Turns a [B, V] logits tensor into B token ids, all rows at once on the device."""

    def __call__(self, logits: torch.Tensor, t: SamplingTensors) -> torch.Tensor:
        """Returns [B] int64 token ids (still on the device). Batches without top-k / top-p take
        `sample_tokens`; the others sort their logits (`apply_top_k_top_p`) first."""
        if t.use_top_k_top_p:
            return _gumbel_argmax(logits, t.temperatures, t.seeds, t.steps, t.top_ks, t.top_ps)
        if t.all_greedy and not use_triton(logits):
            return logits.argmax(dim=-1)
        return sample_tokens(logits, t.temperatures, t.seeds, t.steps)
