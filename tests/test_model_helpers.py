"""Helpers shared by the engine tests: tiny random Hugging Face models saved to disk, and
requests with hand-assigned (scattered) KV blocks for driving the `ModelRunner` directly."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import torch

from semipd.engine.sampling_params import SamplingParams
from semipd.sched.request import Request

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, vocab_size=512, max_position_embeddings=512)
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}


def hf_model(arch: str, **overrides: object) -> torch.nn.Module:
    """A tiny random transformers model of `arch` (llama, llama3, qwen2, qwen3, mistral), fp32, eval mode.
    Norm weights and biases are randomised too, so loading them wrongly shows."""
    import transformers as tf

    kinds = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, {}),
        "llama3": (tf.LlamaConfig, tf.LlamaForCausalLM, {"rope_scaling": LLAMA3_SCALING}),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, {}),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM, {"tie_word_embeddings": True}),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM, {"sliding_window": None}),
    }
    config_cls, model_cls, extra = kinds[arch]
    torch.manual_seed(1234)
    model = model_cls(config_cls(**{**TINY, **extra, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0, 0.2)
    return model


def save_hf(model: torch.nn.Module, path: Path, **kwargs: object) -> Path:
    model.save_pretrained(str(path), **kwargs)
    return path


class Blocks:
    """Hands out KV block ids in a shuffled order, so sequences' blocks are scattered."""

    def __init__(self, num_blocks: int, seed: int = 0) -> None:
        self.free = list(range(num_blocks))
        random.Random(seed).shuffle(self.free)

    def give(self, request: Request, num_tokens: int, block_size: int) -> None:
        need = -(-num_tokens // block_size) - len(request.block_ids)
        for _ in range(max(0, need)):
            request.block_ids.append(self.free.pop())


def make_request(rid: str, prompt: list[int], params: SamplingParams | None = None, seed: int = 0) -> Request:
    params = params or SamplingParams(temperature=0.0, max_tokens=64)
    return Request(rid, len(prompt), params.max_tokens, 0.0, prompt_token_ids=prompt,
                   payload=SimpleNamespace(params=params, seed=seed))


def random_prompt(n: int, vocab: int = 512, seed: int = 0) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
