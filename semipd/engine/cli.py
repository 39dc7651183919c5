"""``semipd generate``: offline generation with the real engine, from the command line.

    semipd generate --model tiny-llama --load-format dummy --device cpu --prompt "Hello" --max-tokens 32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from semipd.engine.engine_config import DEVICES, MODES
from semipd.engine.models.presets import is_preset
from semipd.engine.semi_pd.config import add_semipd_arguments, semipd_config_from_args


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that map onto `EngineConfig` (shared with ``semipd serve``)."""
    g = parser.add_argument_group("engine")
    g.add_argument("--model", required=True, help="model directory (Hugging Face layout) or preset name")
    g.add_argument("--load-format", default="auto", choices=["auto", "safetensors", "dummy"])
    g.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    g.add_argument("--device", default="auto", help=f"one of {list(DEVICES)} or cuda:N")
    g.add_argument("--mode", default="unified", choices=list(MODES))
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    g.add_argument("--block-size", type=int, default=16)
    g.add_argument("--num-kv-blocks", type=int, default=None)
    g.add_argument("--max-num-batched-tokens", type=int, default=8192)
    g.add_argument("--max-num-seqs", type=int, default=256)
    g.add_argument("--max-model-len", type=int, default=None)
    g.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    g.add_argument("--piecewise-max-tokens", type=int, default=2048,
                   help="largest mixed/prefill step replayed from piecewise CUDA graphs (unified mode; 0: none)")
    g.add_argument("--attention-backend", default=None, choices=["triton", "torch"])
    g.add_argument("--tokenizer", default=None, help="directory with tokenizer.json (default: the model's)")
    g.add_argument("--seed", type=int, default=0)
    add_semipd_arguments(parser)


def engine_kwargs(args: argparse.Namespace) -> dict:
    """`EngineConfig` keyword arguments from parsed `add_engine_arguments` options."""
    names = ("model", "load_format", "dtype", "device", "mode", "gpu_memory_utilization", "block_size",
             "num_kv_blocks", "max_num_batched_tokens", "max_num_seqs", "max_model_len", "enforce_eager",
             "piecewise_max_tokens", "attention_backend", "tokenizer", "seed")
    kwargs = {n: getattr(args, n) for n in names}
    kwargs["semipd"] = semipd_config_from_args(args) if args.mode == "semi-pd" else None
    return kwargs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_engine_arguments(parser)
    g = parser.add_argument_group("generation")
    g.add_argument("--prompt", action="append", default=None, help="a prompt (repeat for a batch)")
    g.add_argument("--chat", action="store_true", help="wrap each prompt as a user message in the chat template")
    g.add_argument("--max-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=-1)
    g.add_argument("--sampling-seed", type=int, default=None, help="seed of every request's sampling")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true")
    g.add_argument("--json", action="store_true", help="print one JSON object per output")


def run(args: argparse.Namespace) -> int:
    """Generate and print; bad options or inputs print one error line and return 2."""
    try:
        return _generate(args)
    except ValueError as exc:
        print(f"semipd generate: error: {exc}", file=sys.stderr)
        return 2


def _check_preset_load_format(model: str, load_format: str) -> None:
    """A preset names a model shape without weights: it needs ``--load-format dummy``."""
    if is_preset(model) and not Path(model).is_dir() and load_format != "dummy":
        raise ValueError(f"--model {model} is a preset (a model shape without weights): add --load-format dummy "
                         "for random weights, or pass a Hugging Face model directory")


def _generate(args: argparse.Namespace) -> int:
    from semipd.engine.llm import LLM
    from semipd.engine.sampling_params import SamplingParams

    _check_preset_load_format(args.model, args.load_format)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.sampling_seed, stop=args.stop, ignore_eos=args.ignore_eos)
    start = time.perf_counter()
    llm = LLM(**engine_kwargs(args))
    load_s = time.perf_counter() - start
    prompts: list = args.prompt or ["Hello, my name is"]
    if args.chat:
        prompts = [llm.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=True)
                   for p in prompts]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    gen_s = time.perf_counter() - start
    for prompt, out in zip(args.prompt or prompts, outputs, strict=True):
        if args.json:
            print(json.dumps({"prompt": prompt, "text": out.text, "token_ids": out.token_ids,
                              "finish_reason": out.finish_reason}))
        else:
            print(f"--- {prompt!r}\n{out.text}\n[{len(out.token_ids)} tokens, finish_reason={out.finish_reason}]")
    n = sum(len(o.token_ids) for o in outputs)
    if not args.json:
        print(f"load {load_s:.2f} s; generated {n} tokens in {gen_s:.2f} s ({n / max(gen_s, 1e-9):.1f} tokens/s)")
    return 0
