"""Engine benchmark: decode and prefill against the device's measured roofline, offline throughput,
CUDA graphs vs eager.

    python benchmarks/bench_engine.py                     # Llama-3.1-8B dummy bf16 on the GPU
    python benchmarks/bench_engine.py --quick             # fewer iterations and sequences
    python benchmarks/bench_engine.py --device cpu --model tiny-llama --quick --gemm-size 256 --copy-mib 8

Measured in one run, each in its own try/except (a failure is recorded, the rest go on):

- copy bandwidth: device-to-device copy of ``--copy-mib`` MiB, (bytes read + written) / time;
- GEMM rate: ``--gemm-size``^3 matmul in the model dtype, 2 n^3 / time;
- decode step at batch 1 (context 512) vs the floor (weights read per step) / bandwidth;
- decode step at batch 64 (context 1024) vs (weights + KV read) / bandwidth; for both, the step's
  host phases (input arrays, staging + graph launch, wait) and with ``--profile`` the device
  kernels per step by group, graph and eager (``--trace-dir``: Chrome traces);
- prefill of 4 x 2048 (``--prefill-len``) tokens vs FLOPs (2 x linear params x tokens + attention) / GEMM rate;
- offline throughput: ``--num-seqs`` sequences, input and output lengths uniform in
  ``--len-range`` (100..1024), ignore_eos, output tokens/s, and the engine thread's time per step
  (scheduling, inputs, device, scheduler update, the rest of `Engine.step`);
- greedy outputs with CUDA graphs vs without: token agreement, graph vs eager logits on one
  batch, and the logit margin at each sequence's first differing token (near-ties or not);
- the skinny-matmul plan (cuBLAS vs Triton per weight shape and row bucket) the graphs use.

A "step" is `ModelRunner.run`: input building, forward (graph replay for decode), logits,
sampling and the host copy of the tokens. Writes ``--output`` (JSON) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from semipd.engine.engine import Engine
from semipd.engine.engine_config import EngineConfig
from semipd.engine.models.config import ModelConfig, resolve_model_config
from semipd.engine.runtime.step_profile import MethodTimers, kernel_profile
from semipd.engine.sampling_params import SamplingParams
from semipd.sched.batch import Batch, PrefillChunk
from semipd.sched.request import Request

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "engine_h100.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="llama-3.1-8b", help="preset name or model directory (dummy weights)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--num-kv-blocks", type=int, default=None, help="fixed KV pool (default: sized from memory)")
    p.add_argument("--num-seqs", type=int, default=None, help="offline sequences (default 256, 64 with --quick)")
    p.add_argument("--len-range", type=int, nargs=2, default=(100, 1024), metavar=("LO", "HI"),
                   help="offline input and output lengths are uniform in [LO, HI]")
    p.add_argument("--prefill-len", type=int, default=2048, help="tokens of each of the 4 prefill sequences")
    p.add_argument("--check-prompts", type=int, default=8, help="prompts of the graphs-vs-eager check")
    p.add_argument("--iters", type=int, default=None, help="timing iterations (default 20, 5 with --quick)")
    p.add_argument("--copy-mib", type=int, default=1024)
    p.add_argument("--gemm-size", type=int, default=8192)
    p.add_argument("--quick", action="store_true", help="fewer iterations and sequences")
    p.add_argument("--profile", action="store_true", help="kernel times of the decode steps (torch.profiler, CUDA)")
    p.add_argument("--trace-dir", type=Path, default=None, help="with --profile: write Chrome traces here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = p.parse_args(argv)
    if args.num_seqs is None:
        args.num_seqs = 64 if args.quick else 256
    if args.iters is None:
        args.iters = 5 if args.quick else 20
    lo, hi = args.len_range
    if not 1 <= lo <= hi:
        p.error(f"--len-range needs 1 <= LO <= HI, got {lo} {hi}")
    return args


# -- roofline arithmetic ----------------------------------------------------------------------
def element_size(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8


def decode_weight_bytes(cfg: ModelConfig, dtype: torch.dtype) -> int:
    """Weight bytes one decode step reads: every parameter except the input embedding table,
    of which it reads only a row per sequence (a tied table is read whole, as the LM head)."""
    embedding = 0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size
    return (cfg.num_params() - embedding) * element_size(dtype)


def kv_bytes(cfg: ModelConfig, dtype: torch.dtype, tokens: int) -> int:
    """K and V of `tokens` cached tokens over all layers."""
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * tokens * element_size(dtype)


def prefill_flops(cfg: ModelConfig, seq_lens: list[int]) -> float:
    """2 x (linear parameters of the layers) x tokens, the LM head on one row per sequence, and causal
    attention (QK^T and PV: 4 x heads x head_dim per query-key pair, n(n+1)/2 pairs per sequence)."""
    head = cfg.vocab_size * cfg.hidden_size
    layer_params = cfg.num_params() - head * (1 if cfg.tie_word_embeddings else 2) - cfg.hidden_size
    tokens = sum(seq_lens)
    pairs = sum(n * (n + 1) // 2 for n in seq_lens)
    attention = 4 * cfg.num_attention_heads * cfg.head_dim * pairs * cfg.num_hidden_layers
    return 2.0 * layer_params * tokens + 2.0 * head * len(seq_lens) + attention


# -- measurement helpers ----------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, iters: int, warmup: int = 2) -> float:
    """Mean seconds per call of `fn` after `warmup` calls (device synchronised around the loop)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def copy_bandwidth(device: torch.device, mib: int, iters: int) -> float:
    """Bytes per second of a device-to-device copy, counting the read and the write."""
    src = torch.empty(mib << 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src), device, iters)
    return 2 * src.numel() / seconds


def gemm_rate(device: torch.device, n: int, dtype: torch.dtype, iters: int) -> float:
    """FLOP/s of an n x n x n matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, iters)
    return 2.0 * n ** 3 / seconds


def _requests(engine: Engine, lengths: list[int], decode: bool) -> list[Request]:
    """Requests holding KV blocks for `lengths` cached tokens (contents irrelevant for timing):
    for decode, one generated token on top of the context; for prefill, the bare prompt."""
    vocab = engine.model_config.vocab_size
    rng = random.Random(0)
    reqs = []
    for i, n in enumerate(lengths):
        req = Request(f"bench-{i}", n, 2, 0.0, prompt_token_ids=[rng.randrange(vocab) for _ in range(n)],
                      payload=SimpleNamespace(params=SamplingParams(temperature=0.0), seed=i))
        if decode:
            req.num_computed_tokens = n
            req.append_token(rng.randrange(vocab))
        if not engine.allocator.allocate(req, req.num_tokens, use_watermark=False):
            raise RuntimeError(f"KV pool too small for {len(lengths)} x {n} tokens")
        reqs.append(req)
    return reqs


def _release(engine: Engine, reqs: list[Request]) -> None:
    for r in reqs:
        engine.allocator.free(r)


def _step_phases(engine: Engine, batch: Batch, iters: int) -> dict[str, float]:
    """Mean ms of a graph decode step's phases: host arrays, staging + replay launch, wait for the tokens."""
    runner, graphs = engine.runner, engine.graph_runner
    total = {"host_inputs_ms": 0.0, "launch_ms": 0.0, "wait_ms": 0.0}
    for _ in range(iters):
        t0 = time.perf_counter()
        hb = runner.host_batch(batch)
        t1 = time.perf_counter()
        tokens, _, _ = graphs.decode(hb)
        t2 = time.perf_counter()
        tokens.tolist()
        t3 = time.perf_counter()
        for key, dt in zip(total, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            total[key] += dt * 1e3 / iters
    return total


def decode_step(engine: Engine, batch_size: int, context: int, iters: int, profile: bool,
                trace_dir: Path | None) -> dict[str, Any]:
    """Mean `ModelRunner.run` time of a decode batch, its phases (graphs only), and with `profile`
    where the device time goes (`kernel_profile`)."""
    reqs = _requests(engine, [context] * batch_size, decode=True)
    batch = Batch(decodes=reqs)
    try:
        out: dict[str, Any] = {"step_ms": timed(lambda: engine.runner.run(batch), engine.device, iters) * 1e3}
        out["graphed"] = engine.runner.last_run_graphed
        if engine.graph_runner is not None:
            out.update(_step_phases(engine, batch, iters))
        if profile and engine.device.type == "cuda":
            trace = None if trace_dir is None else trace_dir / f"trace_decode_b{batch_size}.json"
            out["profile"] = kernel_profile(lambda: engine.runner.run(batch), steps=5, trace=trace)
            saved, engine.runner.graph_runner = engine.runner.graph_runner, None
            try:
                out["profile_eager"] = kernel_profile(lambda: engine.runner.run(batch), steps=5)
            finally:
                engine.runner.graph_runner = saved
    finally:
        _release(engine, reqs)
    return out


def prefill_step(engine: Engine, seq_lens: list[int], iters: int) -> dict[str, float]:
    reqs = _requests(engine, seq_lens, decode=False)
    batch = Batch(prefills=[PrefillChunk(r, 0, r.num_prompt_tokens, True) for r in reqs])
    try:
        seconds = timed(lambda: engine.runner.run(batch), engine.device, iters, warmup=1)
    finally:
        _release(engine, reqs)
    return {"step_ms": seconds * 1e3}


def offline_throughput(engine: Engine, num_seqs: int, len_range: tuple[int, int], seed: int) -> dict[str, Any]:
    """Output tokens/s of `num_seqs` requests added at once, with where the engine thread's time went:
    scheduling, input building (host), `ModelRunner.run` beyond input building (launches and the wait
    for the device), scheduler update, and the rest of `Engine.step` (outputs, detokenization, metrics)."""
    rng = random.Random(seed)
    vocab = engine.model_config.vocab_size
    cap = engine.max_model_len // 2
    total_out = 0
    for i in range(num_seqs):
        n_in, n_out = min(cap, rng.randint(*len_range)), min(cap, rng.randint(*len_range))
        total_out += n_out
        engine.add_request(f"offline-{i}", [rng.randrange(vocab) for _ in range(n_in)],
                           SamplingParams(max_tokens=n_out, ignore_eos=True, temperature=0.0))
    timers = MethodTimers()
    timers.wrap(engine.scheduler, "schedule", "schedule")
    timers.wrap(engine.runner, "host_batch", "inputs")
    timers.wrap(engine.runner, "run", "run")
    timers.wrap(engine.scheduler, "update", "update")
    _sync(engine.device)
    start = time.perf_counter()
    steps = 0
    try:
        while engine.has_unfinished():
            engine.step()
            steps += 1
        _sync(engine.device)
    finally:
        timers.restore()
    seconds = time.perf_counter() - start
    t = timers.seconds
    breakdown = {"schedule": t["schedule"], "inputs": t["inputs"], "run_minus_inputs": t["run"] - t["inputs"],
                 "update": t["update"], "rest_of_step": seconds - t["schedule"] - t["run"] - t["update"]}
    return {"num_seqs": num_seqs, "output_tokens": total_out, "seconds": seconds, "steps": steps,
            "output_tokens_per_s": total_out / seconds, "preemptions": engine.num_preemptions,
            "host_breakdown_ms_per_step": {k: v / max(steps, 1) * 1e3 for k, v in breakdown.items()}}


def _last_logits(engine: Engine, tokens: list[int]) -> torch.Tensor:
    """Logits after `tokens`, from one eager prefill of them (fp32)."""
    req = _requests(engine, [len(tokens)], decode=False)[0]
    req.prompt_token_ids = tokens
    try:
        prepared = engine.runner.prepare(Batch(prefills=[PrefillChunk(req, 0, len(tokens), True)]))
        hidden = engine.model(prepared.input_ids, prepared.positions, engine.kv_cache.layers, prepared.meta)
        return engine.model.compute_logits(hidden[-1:])[0]
    finally:
        _release(engine, [req])


def graph_logits_error(engine: Engine, batch_sizes: tuple[int, ...] = (1, 5, 64), context: int = 300) -> float:
    """Largest |graph - eager| / max |logit| over decode batches of `batch_sizes` on the same KV cache."""
    graphs = engine.runner.graph_runner
    worst = 0.0
    for n in batch_sizes:
        reqs = _requests(engine, [context + i for i in range(n)], decode=True)
        try:
            prepared = engine.runner.prepare(Batch(decodes=reqs))
            eager = engine.model.compute_logits(engine.model(prepared.input_ids, prepared.positions,
                                                             engine.kv_cache.layers, prepared.meta))
            graph = engine.model.compute_logits(graphs.run(prepared.input_ids, prepared.positions,
                                                           prepared.meta)[:n])
            worst = max(worst, ((graph - eager).abs().max() / eager.abs().max()).item())
        finally:
            _release(engine, reqs)
    return worst


def graphs_equal_eager(engine: Engine, num_prompts: int, max_tokens: int) -> dict[str, Any]:
    """Greedy tokens of the same prompts with the engine's decode graphs and with them switched off, the
    logits error of graph vs eager decode on one batch, and at each sequence's first differing token
    the margin between the two choices (|logit difference| / max |logit|, from an eager rescoring):
    margins at the level of the logits error mean near-ties, not a bug."""
    rng = random.Random(1)
    vocab = engine.model_config.vocab_size
    prompts = [[rng.randrange(vocab) for _ in range(rng.randint(8, 100))] for _ in range(num_prompts)]

    def run(tag: str) -> list[list[int]]:
        tokens: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            engine.add_request(f"{tag}-{i}", p, SamplingParams(max_tokens=max_tokens, ignore_eos=True,
                                                               temperature=0.0))
        while engine.has_unfinished():
            for delta in engine.step():
                tokens.setdefault(delta.rid, []).extend(delta.new_token_ids)
        return [tokens[f"{tag}-{i}"] for i in range(len(prompts))]

    graphs = run("graph")
    saved, engine.runner.graph_runner = engine.runner.graph_runner, None
    try:
        eager = run("eager")
    finally:
        engine.runner.graph_runner = saved
    margins = []
    for p, a, b in zip(prompts, graphs, eager, strict=True):
        first = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)
        if first is not None:
            logits = _last_logits(engine, p + a[:first])
            margins.append(((logits[a[first]] - logits[b[first]]).abs() / logits.abs().max()).item())
    same = sum(a == b for a, b in zip(graphs, eager, strict=True))
    tokens_same = sum(x == y for a, b in zip(graphs, eager, strict=True) for x, y in zip(a, b, strict=True))
    return {"graphs_captured": bool(saved is not None and saved.keys), "equal": same == len(prompts),
            "sequences_equal": same, "num_sequences": len(prompts),
            "token_match_fraction": tokens_same / (len(prompts) * max_tokens),
            "logits_rel_error": graph_logits_error(engine) if saved is not None else 0.0,
            "first_divergence_margins": margins}


# -- driver -----------------------------------------------------------------------------------
def _measure(results: dict[str, Any], errors: dict[str, str], name: str, fn: Callable[[], Any]) -> None:
    start = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as exc:  # one failure must not lose the other measurements
        errors[name] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    print(f"  {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)


def environment(device: torch.device) -> dict[str, Any]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"gpu": gpu, "device": str(device), "torch": torch.__version__, "triton": triton_version,
            "cuda": torch.version.cuda, "python": platform.python_version(), "machine": platform.node(),
            "date": datetime.date.today().isoformat()}


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    iters = args.iters
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    _measure(results, errors, "copy_bandwidth_bytes_per_s", lambda: copy_bandwidth(device, args.copy_mib, iters))
    _measure(results, errors, "gemm_flops_per_s", lambda: gemm_rate(device, args.gemm_size, dtype, iters))
    cfg = resolve_model_config(args.model)[0]
    max_model_len = min(args.max_model_len, cfg.max_position_embeddings)
    start = time.perf_counter()
    _measure(results, errors, "engine", lambda: Engine(EngineConfig(
        model=args.model, load_format="dummy", dtype=args.dtype, device=args.device, max_model_len=max_model_len,
        max_num_seqs=args.max_num_seqs, gpu_memory_utilization=args.gpu_memory_utilization,
        num_kv_blocks=args.num_kv_blocks, seed=args.seed)))
    engine = results.pop("engine", None)
    if engine is not None:
        results["engine_start_s"] = time.perf_counter() - start
        results["engine_status"] = engine.get_status()
        results["skinny_linear"] = [asdict(t) for t in engine.model.skinny.timings]
        context_1, context_64 = min(512, max_model_len - 1), min(1024, max_model_len - 1)
        prefill_lens = [min(args.prefill_len, max_model_len - 1)] * 4
        _measure(results, errors, "decode_b1",
                 lambda: decode_step(engine, 1, context_1, iters * 5, args.profile, args.trace_dir))
        _measure(results, errors, "decode_b64",
                 lambda: decode_step(engine, 64, context_64, iters * 2, args.profile, args.trace_dir))
        _measure(results, errors, "prefill_4x2048", lambda: prefill_step(engine, prefill_lens, max(2, iters // 2)))
        _measure(results, errors, "offline",
                 lambda: offline_throughput(engine, args.num_seqs, args.len_range, args.seed))
        _measure(results, errors, "cuda_graphs_vs_eager",
                 lambda: graphs_equal_eager(engine, args.check_prompts, 16 if args.quick else 64))
        floors = roofline_floors(cfg, dtype, results.get("copy_bandwidth_bytes_per_s"),
                                 results.get("gemm_flops_per_s"), context_1, context_64, prefill_lens)
        for name, floor_ms in floors.items():
            if name in results and floor_ms is not None:
                results[name]["floor_ms"] = floor_ms
                results[name]["x_floor"] = results[name]["step_ms"] / floor_ms
    return {**environment(device), "model": args.model, "dtype": args.dtype, "quick": args.quick,
            "num_params": cfg.num_params(), "results": results, "errors": errors}


def roofline_floors(cfg: ModelConfig, dtype: torch.dtype, bandwidth: float | None, flops: float | None,
                    context_1: int, context_64: int, prefill_lens: list[int]) -> dict[str, float | None]:
    """Lower bounds (ms) of the three timed steps from the measured bandwidth and GEMM rate."""
    weights = decode_weight_bytes(cfg, dtype)
    return {
        "decode_b1": None if not bandwidth else (weights + kv_bytes(cfg, dtype, context_1)) / bandwidth * 1e3,
        "decode_b64": None if not bandwidth else (weights + kv_bytes(cfg, dtype, 64 * context_64)) / bandwidth * 1e3,
        "prefill_4x2048": None if not flops else prefill_flops(cfg, prefill_lens) / flops * 1e3,
    }


def print_table(report: dict[str, Any]) -> None:
    r = report["results"]
    print(f"\n{report['model']} {report['dtype']} on {report['gpu'] or report['device']} "
          f"(torch {report['torch']}, triton {report['triton']}, {report['date']})")
    if "copy_bandwidth_bytes_per_s" in r:
        print(f"  copy bandwidth     {r['copy_bandwidth_bytes_per_s'] / 1e12:8.3f} TB/s (read + write)")
    if "gemm_flops_per_s" in r:
        print(f"  GEMM rate          {r['gemm_flops_per_s'] / 1e12:8.1f} TFLOP/s")
    for name in ("decode_b1", "decode_b64", "prefill_4x2048"):
        if name in r:
            m = r[name]
            floor = f"floor {m['floor_ms']:8.3f} ms  x{m['x_floor']:.2f}" if "floor_ms" in m else ""
            print(f"  {name:<18} {m['step_ms']:8.3f} ms   {floor}")
            for tag in ("profile", "profile_eager"):
                if tag in m:
                    pr = m[tag]
                    by_time = sorted(pr["groups_ms"].items(), key=lambda x: -x[1])
                    groups = ", ".join(f"{g} {ms:.3f}" for g, ms in by_time)
                    print(f"    {tag:<14} wall {pr['wall_ms']:.3f} ms = kernels {pr['kernel_ms']:.3f} "
                          f"({pr['kernels_per_step']:.0f}) + idle {pr['idle_ms']:.3f}; {groups}")
    if "offline" in r:
        o = r["offline"]
        print(f"  offline            {o['output_tokens_per_s']:8.1f} output tokens/s ({o['num_seqs']} seqs, "
              f"{o['seconds']:.1f} s, {o['steps']} steps, {o['preemptions']} preemptions)")
        print("    ms/step: " + ", ".join(f"{k} {v:.3f}" for k, v in o["host_breakdown_ms_per_step"].items()))
    if "cuda_graphs_vs_eager" in r:
        g = r["cuda_graphs_vs_eager"]
        print(f"  graphs == eager    {g['equal']} ({g['sequences_equal']}/{g['num_sequences']} sequences, "
              f"{g['token_match_fraction']:.3f} of tokens; graphs captured: {g['graphs_captured']}); logits error "
              f"{g['logits_rel_error']:.2e}; margins at first divergences "
              f"{[round(m, 4) for m in g['first_divergence_margins']]}")
    for t in r.get("skinny_linear", []):
        if t["chosen"] != "cublas":
            print(f"  skinny matmul {t['n']}x{t['k']} rows {t['rows']:2d}: cuBLAS {t['cublas_us']:7.1f} us, "
                  f"Triton {t['triton_us']:7.1f} us (kept)")
    for name, err in report["errors"].items():
        print(f"  FAILED {name}: {err}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run_benchmark(args)
    print_table(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.output}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
