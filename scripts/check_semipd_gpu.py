"""Check Semi-PD execution on a CUDA GPU (Llama-3.1-8B dummy weights, bf16) and measure its SM scaling.

1. Outputs. The same greedy requests run through the unified engine and through the Semi-PD
   engine under load (arrivals spread over time, a re-partition forced every 3 worker
   boundaries across every split). Batches differ between the two, and bf16 results depend
   on the batch, so near-ties may pick different tokens and the continuations then differ.
   Besides exact equality the check therefore scores every generated token teacher-forced
   (one prefill of prompt + output on an idle engine): the margin ``max logit - logit of the
   chosen token`` is ~0 for a correct greedy token and large for one computed from a wrong
   KV cache. Pass: Semi-PD's largest margin is within the noise of the unified engine's own
   (``max(2 x unified max margin, MARGIN_FLOOR)``), far below a random token's median margin.
2. SM scaling. For every partition: a 2048-token prefill iteration on the prefill side and a
   decode step (batch 64, context 1024) on the decode side, through the engine's runners and
   graphs (`semipd.engine.semi_pd.probe`), with the unified engine on the whole GPU as reference.

    python scripts/check_semipd_gpu.py [--json out.json] [--requests 48] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
import sys
import threading
import time
import traceback
from types import SimpleNamespace
from typing import Any

import torch

from semipd.engine import LLM, EngineConfig, SamplingParams
from semipd.engine.semi_pd.config import SemiPDConfig
from semipd.engine.semi_pd.engine import SemiPDEngine
from semipd.engine.semi_pd.probe import sm_scaling_table, synthetic_batches
from semipd.partition.green import green_contexts_unavailable_reason
from semipd.sched import Batch, PrefillChunk, Request

MARGIN_FLOOR = 0.125
"""Logit margin (bf16 logits) always accepted as noise."""


def environment() -> dict[str, Any]:
    import triton

    try:
        from cuda.bindings import __version__ as cuda_bindings
    except ImportError:
        cuda_bindings = None
    return {"gpu": torch.cuda.get_device_name(), "sms": torch.cuda.get_device_properties(0).multi_processor_count,
            "torch": torch.__version__, "triton": triton.__version__, "cuda_bindings": cuda_bindings,
            "green_contexts": green_contexts_unavailable_reason() or "available",
            "date": time.strftime("%Y-%m-%d")}


def workload(n: int, vocab: int, seed: int = 0) -> list[tuple[list[int], SamplingParams]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(16, 1500))]
        out.append((prompt, SamplingParams(temperature=0.0, max_tokens=rng.randint(32, 96), ignore_eos=True)))
    return out


def run_semipd(engine: SemiPDEngine, work: list, gap_s: float, every: int = 3) -> tuple[dict[str, list[int]], float]:
    """Feed `work` from a thread with `gap_s` between requests, forcing a re-partition every `every`
    launch stretches (decode steps and prefill layers: prefill moves mid-forward)."""
    pm = engine.partitions
    original, choices, counter = pm.begin_launch, pm.reachable_prefill_sms, itertools.count()

    def begin_launch(phase: str):
        k = next(counter)
        if k % every == 0:
            pm.request_sm_reallocation(pm.grid.allocation(choices[(k // every * 7) % len(choices)]))
        return original(phase)

    pm.begin_launch = begin_launch

    def feed() -> None:
        for i, (prompt, params) in enumerate(work):
            engine.add_request(f"c{i}", prompt, params)
            time.sleep(gap_s)

    start = time.perf_counter()
    feeder = threading.Thread(target=feed)
    feeder.start()
    tokens: dict[str, list[int]] = {}
    while feeder.is_alive() or engine.has_unfinished():
        for delta in engine.step():
            tokens.setdefault(delta.rid, []).extend(delta.new_token_ids)
        if time.perf_counter() - start > 300:
            raise RuntimeError(f"semi-pd run stalled: {engine.get_status()}")
    feeder.join()
    pm.partition = original
    return tokens, time.perf_counter() - start


@torch.inference_mode()
def margins(engine: SemiPDEngine, prompt: list[int], output: list[int]) -> list[float]:
    """Teacher-forced: max logit - logit of each generated token, from one prefill of prompt + output."""
    seq = prompt + output
    req = Request("score", len(seq), 1, 0.0, prompt_token_ids=seq,
                  payload=SimpleNamespace(params=SamplingParams(temperature=0.0), seed=0))
    if not engine.allocator.allocate(req, len(seq), use_watermark=False):
        raise RuntimeError("no KV room to score a sequence")
    try:
        runner = engine.prefill_worker.runner
        prepared = runner.prepare(Batch(prefills=[PrefillChunk(req, 0, len(seq), True)]))
        hidden = runner.forward(prepared)
        rows = torch.arange(len(prompt) - 1, len(seq) - 1, device=hidden.device)
        logits = engine.model.compute_logits(hidden[rows])
        chosen = logits.gather(1, torch.tensor(output, device=logits.device)[:, None])[:, 0]
        return (logits.max(dim=1).values - chosen).tolist()
    finally:
        engine.allocator.free(req)


def random_margin(engine: SemiPDEngine, prompt: list[int], length: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return margins(engine, prompt, [rng.randrange(engine.model_config.vocab_size) for _ in range(length)])


def compare(engine: SemiPDEngine, work: list, ref: list[list[int]], got: dict[str, list[int]]) -> dict[str, Any]:
    semi = [got[f"c{i}"] for i in range(len(work))]
    exact = sum(a == b for a, b in zip(ref, semi, strict=True))
    first = sum(a[0] == b[0] for a, b in zip(ref, semi, strict=True))
    diverge = [next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
               for a, b in zip(ref, semi, strict=True)]
    m_semi = [m for (p, _), out in zip(work, semi, strict=True) for m in margins(engine, p, out)]
    m_ref = [m for (p, _), out in zip(work, ref, strict=True) for m in margins(engine, p, out)]
    m_rand = [m for i, (p, _) in enumerate(work[:8]) for m in random_margin(engine, p, 32, i)]
    tol = max(2 * max(m_ref), MARGIN_FLOOR)
    m_rand.sort()
    return {
        "requests": len(work), "exact_equal": exact, "first_token_equal": first,
        "first_divergence_positions": [d for d in diverge if d is not None],
        "lengths_equal": all(len(a) == len(b) for a, b in zip(ref, semi, strict=True)),
        "max_margin_semipd": max(m_semi), "max_margin_unified": max(m_ref),
        "median_margin_random_token": m_rand[len(m_rand) // 2], "tolerance": tol,
        "tokens_scored": len(m_semi), "passed": max(m_semi) <= tol and m_rand[len(m_rand) // 2] > 4 * tol,
    }


def unified_row(llm: LLM, reps: int) -> dict[str, Any]:
    """The whole-GPU reference: the unified engine's prefill and graph decode step."""
    runner = llm.engine.runner
    with torch.inference_mode(), synthetic_batches(llm.engine, 2048, 64, 1024) as (pb, db):
        times = {}
        for name, batch, n in (("prefill2048_ms", pb, max(2, reps // 3)), ("decode64_ctx1024_ms", db, reps)):
            runner.run(batch)
            ts = []
            for _ in range(n):
                t0 = time.perf_counter()
                runner.run(batch)
                ts.append(time.perf_counter() - t0)
            times[name] = 1000 * sorted(ts)[len(ts) // 2]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    return {"prefill_sms": sms, "decode_sms": sms, "engine": "unified (whole GPU)", **times}


def section(results: dict, name: str, fn) -> Any:
    t0 = time.perf_counter()
    try:
        value = fn()
        results[name] = value
        return value
    except Exception as exc:
        traceback.print_exc()
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        return None
    finally:
        print(f"[{name}] {time.perf_counter() - t0:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--gap-ms", type=float, default=8.0, help="time between two request arrivals")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--quick", action="store_true", help="fewer requests and repetitions")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not torch.cuda.is_available():
        print("check_semipd_gpu: needs a CUDA GPU", file=sys.stderr)
        return 2
    n = 12 if args.quick else args.requests
    reps = 4 if args.quick else 10
    common = dict(model=args.model, load_format="dummy", dtype="bfloat16", device="cuda", max_num_seqs=64,
                  max_model_len=4096, max_num_batched_tokens=4096)
    results: dict[str, Any] = {"environment": environment()}
    print(json.dumps(results["environment"]), flush=True)
    llm = LLM(gpu_memory_utilization=0.35, **common)
    work = workload(n, llm.engine.model_config.vocab_size)

    def unified():
        t0 = time.perf_counter()
        outs = llm.generate([p for p, _ in work], [s for _, s in work])
        return {"tokens": [o.token_ids for o in outs], "seconds": time.perf_counter() - t0}

    ref = section(results, "unified_run", unified)
    section(results, "unified_row", lambda: unified_row(llm, reps))
    t0 = time.perf_counter()
    engine = section(results, "semipd_startup", lambda: SemiPDEngine(EngineConfig(
        gpu_memory_utilization=0.85, mode="semi-pd",
        semipd=SemiPDConfig(controller="static", min_prefill_percent=1, max_prefill_percent=99), **common)))
    results["semipd_startup_seconds"] = time.perf_counter() - t0
    if engine is None:
        return finish(results, args.json)
    del results["semipd_startup"]
    try:
        def semipd_run() -> dict[str, Any]:
            tokens, seconds = run_semipd(engine, work, args.gap_ms / 1000)
            return {"tokens": tokens, "seconds": seconds}

        got = section(results, "semipd_run", semipd_run)
        status = engine.get_status()
        results["semipd_status"] = {k: status[k] for k in ("allocation", "partitions", "cuda_graphs", "workers",
                                                           "kv_cache", "gil_switch_interval_s")}
        if ref and got and "tokens" in ref:
            section(results, "outputs", lambda: compare(engine, work, ref["tokens"], got["tokens"]))
        section(results, "sm_scaling", lambda: sm_scaling_table(engine, 2048, 64, 1024, max(2, reps // 3), reps))
        results["blocks_all_free"] = engine.allocator.num_free == engine.allocator.num_blocks
    finally:
        engine.stop()
    return finish(results, args.json)


def finish(results: dict[str, Any], path: str | None) -> int:
    """Judge, print and write the results; the exit status."""
    for key in ("unified_run", "semipd_run"):
        if isinstance(results.get(key), dict):
            results[key].pop("tokens", None)
    graphed = results.get("semipd_status", {}).get("workers", {}).get("decode", {}).get("graph_steps", 0) > 0
    passed = bool(results.get("outputs", {}).get("passed")) and results.get("blocks_all_free", False) \
        and "error" not in results.get("sm_scaling", {}) and graphed
    results["passed"] = passed
    print(json.dumps({k: v for k, v in results.items() if k != "semipd_status"}, indent=1, default=str))
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
