"""Check the engine on a CUDA GPU (Triton kernels, CUDA graphs) against Hugging Face transformers.

1. Logits: tiny random Llama (llama3 RoPE scaling), Qwen2 and Qwen3 checkpoints (head_dim 64 and
   128), loaded by our loader, through batched prefill, chunked prefill over a cached prefix
   and decode steps, against transformers in fp32 on the same GPU. In bf16 a case passes when
   our error is within 2x transformers' own bf16 error (+ 1e-2 of the logit scale); in fp32
   when the max error is below 1e-2 of the logit scale (Triton may use TF32).
2. Engine: greedy tokens with CUDA graphs vs eager, with chunked prefill (64- and 16-token
   budgets: mixed batches, graph buckets 1-8) and under a tiny KV pool (preemption) against the
   default engine. In fp32 the tokens must be identical. In bf16 near-tied logits can flip an
   argmax, so each sequence's first differing token is rescored: the two choices' logits must
   lie within 5% of the logit scale, about twice the bf16 logit error (a bug differs by far
   more). Graph vs eager decode logits of the same batch (bucket padding, static buffers) must
   agree to 1e-4 (fp32) / 3e-2 (bf16).
3. AsyncEngine: streaming requests finish; an abort returns every KV block.

Prints a table; exits 1 on any failure. ``--device cpu`` runs the same checks on the torch
reference path (a self-test of this script).

    python scripts/check_engine_gpu.py [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from semipd.engine import LLM, AsyncEngine, SamplingParams
from semipd.engine.models.loader import load_model
from semipd.engine.runtime.kv_cache import KVCache, KVCacheSpec
from semipd.engine.runtime.model_runner import ModelRunner
from semipd.sched.batch import Batch, PrefillChunk
from semipd.sched.request import Request

SHAPE = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
             num_key_value_heads=2, vocab_size=1024, max_position_embeddings=4096)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 256}
BLOCK = 16


@dataclass
class Result:
    check: str
    case: str
    value: float
    bound: float
    passed: bool
    seconds: float
    error: str = ""


def hf_checkpoint(arch: str, head_dim: int, directory: Path):
    """A random transformers model (norm weights and biases randomised too), saved to `directory`."""
    import transformers as tf

    kinds = {"llama3": (tf.LlamaConfig, tf.LlamaForCausalLM, {"rope_scaling": LLAMA3}),
             "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, {}),
             "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM, {"tie_word_embeddings": True})}
    config_cls, model_cls, extra = kinds[arch]
    torch.manual_seed(0)
    model = model_cls(config_cls(**SHAPE, head_dim=head_dim, initializer_range=0.05, **extra)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0, 0.2)
    model.save_pretrained(str(directory))
    return model


def _request(rid: str, prompt: list[int], blocks: list[int]) -> Request:
    req = Request(rid, len(prompt), 64, 0.0, prompt_token_ids=prompt,
                  payload=SimpleNamespace(params=SamplingParams(temperature=0.0), seed=0))
    req.block_ids = blocks
    return req


@torch.inference_mode()
def our_logits(model, device: torch.device, prompts: list[list[int]], split: int, decode_steps: int) -> list:
    """Rows of logits per sequence: prompt i is prefilled in two chunks (the first `split` tokens, then
    the rest beside the other prompts), then `decode_steps` tokens are fed one per step."""
    spec = KVCacheSpec.for_model(model.config, BLOCK, model.dtype)
    runner = ModelRunner(model, KVCache(spec, 1024, device))
    free = list(range(1024))[::-1]
    reqs = []
    for i, p in enumerate(prompts):
        need = -(-(len(p) + decode_steps) // BLOCK)
        reqs.append(_request(f"c{i}", p, [free.pop() for _ in range(need)]))

    def logits(batch: Batch):
        prepared = runner.prepare(batch)
        return model.compute_logits(runner.forward(prepared)).float()

    first = reqs[0]
    logits(Batch(prefills=[PrefillChunk(first, 0, split, False)]))
    first.num_computed_tokens = split
    chunks = [PrefillChunk(first, split, first.num_prompt_tokens - split, True)]
    chunks += [PrefillChunk(r, 0, r.num_prompt_tokens, True) for r in reqs[1:]]
    out = logits(Batch(prefills=chunks))
    rows, start = [], 0
    for c in chunks:
        rows.append([out[start:start + c.num_tokens]])
        start += c.num_tokens
    for step in range(decode_steps):
        for r in reqs:
            r.num_computed_tokens = r.num_tokens
            r.append_token((step * 97 + len(r.rid)) % model.config.vocab_size)
        out = logits(Batch(decodes=reqs))
        for i in range(len(reqs)):
            rows[i].append(out[i:i + 1])
    return [torch.cat(r) for r in rows], reqs


@torch.inference_mode()
def hf_logits(hf, reqs: list[Request], split: int, device: torch.device) -> list[torch.Tensor]:
    """Reference rows matching `our_logits`: the first request's rows start at `split`."""
    out = []
    for i, r in enumerate(reqs):
        full = hf(torch.tensor([r.token_ids(0, r.num_tokens)], device=device)).logits[0].float()
        out.append(full[split:] if i == 0 else full)
    return out


def check_logits(device: torch.device, results: list[Result]) -> None:
    prompts = [[(7 * i + 3 * n) % 1024 for i in range(n)] for n in (300, 1, 17, 129, 1000)]
    split, steps = 160, 6
    for arch in ("llama3", "qwen2", "qwen3"):
        for head_dim in (64, 128):
            with tempfile.TemporaryDirectory() as d:
                hf = hf_checkpoint(arch, head_dim, Path(d)).to(device)
                ref = None
                hf_bf16_err = None
                for dtype in ("float32", "bfloat16"):
                    case = f"{arch} d{head_dim} {dtype}"

                    def run(dtype=dtype, hf=hf):
                        nonlocal ref, hf_bf16_err
                        model = load_model(d, dtype=dtype, device=device)
                        ours, reqs = our_logits(model, device, prompts, split, steps)
                        if ref is None:
                            ref = hf_logits(hf, reqs, split, device)
                        scale = max(r.abs().max().item() for r in ref)
                        err = max((o - r).abs().max().item() for o, r in zip(ours, ref, strict=True)) / scale
                        if dtype == "float32":
                            return err, 1e-2
                        if hf_bf16_err is None:
                            ref16 = hf_logits(copy.deepcopy(hf).to(torch.bfloat16), reqs, split, device)
                            hf_bf16_err = max((o - r).abs().max().item() for o, r in zip(ref16, ref,
                                                                                         strict=True)) / scale
                        return err, 2 * hf_bf16_err + 1e-2

                    _record(results, "logits vs transformers (max err / max |logit|)", case, run)


def _tokens(llm: LLM, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    return [o.token_ids for o in llm.generate(prompts, params)]


@torch.inference_mode()
def _last_logits(llm: LLM, tokens: list[int]) -> torch.Tensor:
    """fp32 logits after `tokens` from one eager prefill on `llm`'s engine (blocks returned after)."""
    engine = llm.engine
    req = _request("rescore", tokens, [])
    if not engine.allocator.allocate(req, len(tokens), use_watermark=False):
        raise RuntimeError("no KV room to rescore")
    try:
        prepared = engine.runner.prepare(Batch(prefills=[PrefillChunk(req, 0, len(tokens), True)]))
        hidden = engine.model(prepared.input_ids, prepared.positions, engine.kv_cache.layers, prepared.meta)
        return engine.model.compute_logits(hidden[-1:])[0]
    finally:
        engine.allocator.free(req)


def _divergence_margins(ref: LLM, prompts: list[list[int]], a: list[list[int]], b: list[list[int]]) -> list[float]:
    """At each sequence's first differing token: |logit(a) - logit(b)| / max |logit| under `ref`'s model.
    A margin within the bf16 noise of the logits means a near-tie flipped, not a wrong computation."""
    margins = []
    for p, x, y in zip(prompts, a, b, strict=True):
        first = next((i for i, (u, v) in enumerate(zip(x, y, strict=True)) if u != v), None)
        if first is not None:
            logits = _last_logits(ref, p + x[:first])
            margins.append(((logits[x[first]] - logits[y[first]]).abs() / logits.abs().max()).item())
    return margins


@torch.inference_mode()
def _graph_logits_error(llm: LLM, batch_sizes: tuple[int, ...]) -> float:
    """Largest |graph - eager| / max |logit| of decode batches of `batch_sizes` over the same KV cache
    (padded rows, stale static buffers and bucket shapes included)."""
    engine = llm.engine
    runner, graphs = engine.runner, engine.graph_runner
    worst = 0.0
    for n in batch_sizes:
        reqs = []
        for i in range(n):
            prompt = [(13 * j + i) % SHAPE["vocab_size"] for j in range(40 + 37 * i)]
            req = _request(f"g{i}", prompt, [])
            if not engine.allocator.allocate(req, len(prompt) + 1, use_watermark=False):
                raise RuntimeError("no KV room")
            reqs.append(req)
        try:
            runner.run(Batch(prefills=[PrefillChunk(r, 0, r.num_prompt_tokens, True) for r in reqs]))
            for r in reqs:
                r.num_computed_tokens = r.num_prompt_tokens
                r.append_token(7)
            prepared = runner.prepare(Batch(decodes=reqs))
            eager = engine.model.compute_logits(engine.model(prepared.input_ids, prepared.positions,
                                                             engine.kv_cache.layers, prepared.meta))
            graph = engine.model.compute_logits(graphs.run(prepared.input_ids, prepared.positions,
                                                           prepared.meta)[:n])
            worst = max(worst, ((graph - eager).abs().max() / eager.abs().max()).item())
        finally:
            for r in reqs:
                engine.allocator.free(r)
    return worst


BF16_MARGIN = 5e-2
"""Largest first-divergence margin (share of max |logit|) accepted as a bf16 near-tie."""


def check_engine(device: torch.device, results: list[Result]) -> None:
    """Greedy tokens of graphs / eager / chunked prefill (budgets 64 and 16) / preemption against the
    default engine: identical in fp32; in bf16 every first divergence must be a near-tie. Graph vs
    eager decode logits on the same batch, in both dtypes."""
    prompts = [[(11 * i + n) % 1024 for i in range(n)] for n in (5, 100, 333, 37, 700, 2, 64, 250)]
    with tempfile.TemporaryDirectory() as d:
        hf_checkpoint("llama3", 128, Path(d))
        for dtype in ("float32", "bfloat16"):
            common = dict(device=str(device), dtype=dtype, max_model_len=2048, max_num_seqs=16)
            base_llm = LLM(d, num_kv_blocks=4096, **common)
            base = _tokens(base_llm, prompts, 48)
            variants: dict[str, dict] = {
                "eager (no CUDA graphs)": dict(enforce_eager=True, num_kv_blocks=4096),
                "chunked prefill, 64-token budget": dict(max_num_batched_tokens=64, num_kv_blocks=4096),
                "chunked prefill, 16-token budget": dict(max_num_batched_tokens=16, num_kv_blocks=4096),
                "tiny KV pool (preemption)": dict(num_kv_blocks=60, kv_watermark=0.0),
            }
            for name, kwargs in variants.items():
                def run(kwargs=kwargs, name=name, common=common, base_llm=base_llm, base=base):
                    llm = LLM(d, **kwargs, **common)
                    toks = _tokens(llm, prompts, 48)
                    if "preemption" in name and llm.engine.num_preemptions == 0:
                        raise AssertionError("the tiny pool did not preempt")
                    if common["dtype"] == "float32":
                        return _agreement(toks, base), 1.0
                    return max(_divergence_margins(base_llm, prompts, base, toks), default=0.0), BF16_MARGIN
                check = ("fp32 greedy tokens equal default (fraction)" if dtype == "float32" else
                         "bf16 first-divergence margin / max |logit|")
                _record(results, check, name, run, higher_is_better=dtype == "float32")
            bound = 1e-4 if dtype == "float32" else 3e-2
            _record(results, "graph vs eager decode logits (max err / max |logit|)", f"batches 1, 3, 8, 13 {dtype}",
                    lambda base_llm=base_llm, bound=bound: (_graph_logits_error(base_llm, (1, 3, 8, 13)), bound))
            del base_llm
        common = dict(device=str(device), dtype="bfloat16", max_model_len=2048, max_num_seqs=16, num_kv_blocks=4096)
        _record(results, "async engine", "stream + abort, blocks returned", lambda: _check_async(d, common),
                higher_is_better=True)


def _agreement(a: list[list[int]], b: list[list[int]]) -> float:
    total = sum(len(x) for x in a)
    return sum(p == q for x, y in zip(a, b, strict=True) for p, q in zip(x, y, strict=True)) / total


ASYNC_TIMEOUT_S = 60.0


def _check_async(model_dir: str, common: dict) -> tuple[float, float]:
    llm = LLM(model_dir, **common)
    a = AsyncEngine(llm.engine)
    a.start()

    async def main() -> int:
        async def one(i: int, abort_after: int | None) -> int:
            n = 0
            async for out in a.generate(f"a{i}", [1, 2, 3 + i], SamplingParams(max_tokens=64, ignore_eos=True)):
                n += len(out.new_token_ids)
                if abort_after is not None and n == abort_after:
                    a.abort(f"a{i}")
            return n

        counts = await asyncio.gather(*(one(i, 5 if i % 2 else None) for i in range(8)))
        return sum(c == 64 for c in counts)

    try:
        finished = asyncio.run(asyncio.wait_for(main(), ASYNC_TIMEOUT_S))  # a dead engine thread must not hang us
        for _ in range(500):
            status = a.get_status()
            if status["num_unfinished"] == 0:
                break
            time.sleep(0.01)
        ok = finished == 4 and status["kv_cache"]["usage"] == 0 and status["num_step_errors"] == 0
    finally:
        a.stop()
    return float(ok), 1.0


def _record(results: list[Result], check: str, case: str, fn: Callable[[], tuple[float, float]],
            higher_is_better: bool = False) -> None:
    start = time.perf_counter()
    try:
        value, bound = fn()
        passed = value >= bound if higher_is_better else value <= bound
        results.append(Result(check, case, value, bound, passed, time.perf_counter() - start))
    except Exception as exc:
        traceback.print_exc()
        results.append(Result(check, case, float("nan"), float("nan"), False, time.perf_counter() - start,
                              f"{type(exc).__name__}: {exc}"))
    r = results[-1]
    print(f"{'ok  ' if r.passed else 'FAIL'} {r.check:<52} {r.case:<34} {r.value:10.4g} (bound {r.bound:.4g}) "
          f"{r.seconds:6.1f} s {r.error}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    results: list[Result] = []
    check_logits(device, results)
    check_engine(device, results)
    failed = [r for r in results if not r.passed]
    print(f"\n{len(results) - len(failed)}/{len(results)} checks passed on "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'} (torch {torch.__version__})")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
