"""Engine set-up both engines share (the unified `Engine` and the `SemiPDEngine`): the device, the
model and tokenizer, the paged KV cache, and turning a validated request into a scheduler
`Request` carrying its `Sequence`."""

from __future__ import annotations

import logging
from typing import Any

import torch

from semipd.engine.engine_config import EngineConfig
from semipd.engine.models.config import resolve_model_config
from semipd.engine.models.llama import LlamaForCausalLM
from semipd.engine.models.loader import load_model
from semipd.engine.runtime.kv_cache import (
    KVCache,
    KVCacheSpec,
    cpu_num_blocks,
    cuda_num_blocks,
    profile_activation_peak,
)
from semipd.engine.runtime.piecewise_graphs import PiecewiseGraphs
from semipd.engine.runtime.sequence import Sequence
from semipd.engine.sampling_params import SamplingParams
from semipd.engine.tokenizer import Tokenizer, make_tokenizer, tokenizer_dir
from semipd.sched import BlockAllocator, Request

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """The engine's device; a CUDA device always with its index (``torch.cuda.set_device``, which
    the engine's threads call, refuses one without)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available")
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def load_tokenizer(config: EngineConfig, eos_token_ids: tuple[int, ...], bos_token_id: int | None,
                   vocab_size: int) -> Tokenizer:
    """The tokenizer directory's ``tokenizer.json``, else a byte-level stand-in (dummy models, presets)."""
    return make_tokenizer(tokenizer_dir(config.model, config.tokenizer), eos_token_ids, bos_token_id, vocab_size)


def load_engine_model(config: EngineConfig,
                      device: torch.device) -> tuple[LlamaForCausalLM, int, Tokenizer, frozenset[int]]:
    """The model on `device`, the effective ``max_model_len``, the tokenizer and every EOS id
    (the config's, generation_config's and the tokenizer's)."""
    model_config, _ = resolve_model_config(config.model)
    if config.max_model_len is not None and config.max_model_len > model_config.max_position_embeddings:
        raise ValueError(f"max_model_len {config.max_model_len} exceeds the model's max_position_embeddings "
                         f"{model_config.max_position_embeddings}")
    max_model_len = config.max_model_len or model_config.max_position_embeddings
    model = load_model(config.model, config.load_format, config.dtype, device, config.attention_backend, config.seed)
    tokenizer = load_tokenizer(config, model_config.eos_token_ids, model_config.bos_token_id, model_config.vocab_size)
    eos = frozenset(tokenizer.eos_token_ids) | frozenset(model_config.eos_token_ids)
    return model, max_model_len, tokenizer, eos


def allocate_kv_cache(config: EngineConfig, model: LlamaForCausalLM, device: torch.device,
                      max_model_len: int) -> KVCache:
    """The paged KV cache: `config.num_kv_blocks` (or a small CPU default), else sized from free CUDA
    memory after a profiled activation peak, times ``gpu_memory_utilization``."""
    spec = KVCacheSpec.for_model(model.config, config.block_size, model.dtype)
    if config.num_kv_blocks is not None or device.type != "cuda":
        num_blocks = cpu_num_blocks(spec, config.num_kv_blocks)
    else:
        peak = profile_activation_peak(model, config.max_num_batched_tokens, max_model_len, config.block_size)
        num_blocks = cuda_num_blocks(spec, device, config.gpu_memory_utilization, peak)
    logger.info("KV cache: %d blocks of %d tokens (%.2f GiB)", num_blocks, config.block_size,
                num_blocks * spec.bytes_per_block / 2**30)
    return KVCache(spec, num_blocks, device)


def piecewise_graphs(config: EngineConfig, model: LlamaForCausalLM, kv_cache: KVCache) -> PiecewiseGraphs | None:
    """The piecewise graphs `config` asks for, not captured yet (None: ``enforce_eager`` or
    ``piecewise_max_tokens`` 0); their largest bucket is at most the token budget."""
    if config.enforce_eager or not config.piecewise_max_tokens:
        return None
    return PiecewiseGraphs(model, kv_cache, min(config.piecewise_max_tokens, config.max_num_batched_tokens))


def check_request(prompt_token_ids: list[int], params: SamplingParams, max_model_len: int, vocab_size: int) -> None:
    """Raise ValueError if a request can never run (empty or too long prompt, bad token ids)."""
    if not isinstance(params, SamplingParams):
        raise ValueError(f"params must be SamplingParams, got {type(params).__name__}")
    n = len(prompt_token_ids)
    if n == 0:
        raise ValueError("prompt_token_ids must not be empty")
    if n >= max_model_len:
        raise ValueError(f"prompt has {n} tokens; max_model_len is {max_model_len} and at least one "
                         "output token must fit")
    if not all(isinstance(t, int) and 0 <= t < vocab_size for t in prompt_token_ids):
        raise ValueError(f"prompt_token_ids must be ints in [0, {vocab_size})")


def build_request(rid: str, prompt_token_ids: list[int], params: SamplingParams, seed: int, *,
                  eos_token_ids: frozenset[int], max_model_len: int, arrival_time: float) -> Request:
    """A scheduler `Request` carrying the engine's per-request state (`Sequence`): stop ids, seed,
    and ``max_tokens`` capped by ``max_model_len``."""
    prompt = list(prompt_token_ids)
    stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else eos_token_ids)
    seq = Sequence(params=params, seed=seed, stop_ids=stop_ids)
    max_tokens = min(params.max_tokens, max_model_len - len(prompt))
    return Request(rid, len(prompt), max_tokens, arrival_time, prompt_token_ids=prompt, payload=seq)


def engine_status(config: EngineConfig, model: LlamaForCausalLM, device: torch.device, max_model_len: int,
                  allocator: BlockAllocator) -> dict[str, Any]:
    """The status keys both engines report: mode, model, device, dtype, KV cache, limits."""
    return {
        "mode": config.mode,
        "model": config.model,
        "architecture": model.config.architecture,
        "device": str(device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "kv_cache": allocator.status(),
        "max_model_len": max_model_len,
        "vocab_size": model.config.vocab_size,
        "max_num_seqs": config.max_num_seqs,
        "max_num_batched_tokens": config.max_num_batched_tokens,
    }
