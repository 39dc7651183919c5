"""Piecewise CUDA graphs of mixed and prefill steps on the GPU: correctness against the eager step,
step time graphed vs eager, capture time and graph memory.

    python benchmarks/check_piecewise_graphs.py --output benchmarks/results/piecewise_h100.json

One unified engine (Llama-3.1-8B dummy bf16 by default) without piecewise graphs; a
`PiecewiseGraphs` is then captured beside it (its time, and the device memory that went from free
to used: static buffers, graph pool and graph objects, are measured)
and two `ModelRunner`s over the same model and KV cache run the same batches: eager and
piecewise. Each shape is a prefill chunk of C tokens beside D decode rows at context K
(synthetic requests). Per shape:

- correctness: final hidden states of the two (max abs difference, relative to the largest
  value) and the greedy tokens (share equal);
- time: mean of ``--iters`` back-to-back ``launch(...).wait()`` steps each, and the host time of
  the launch alone (how long the thread is busy putting the step on the GPU);
- the floor: FLOPs (2 x params x tokens) over the GEMM rate measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

from semipd.engine.engine import Engine
from semipd.engine.engine_config import EngineConfig
from semipd.engine.runtime.model_runner import ModelRunner
from semipd.engine.runtime.piecewise_graphs import PiecewiseGraphs
from semipd.engine.runtime.warm_up import synthetic_request
from semipd.sched import Batch, PrefillChunk

SHAPES = [(16, 0, 0), (48, 16, 1024), (112, 16, 1024), (192, 64, 512), (448, 64, 1024), (896, 128, 512),
          (1900, 148, 512), (2048, 0, 0), (3072, 64, 512)]
"""(chunk tokens, decode rows, decode context); the last exceeds the largest bucket (eager in both)."""


def gemm_tflops(device: torch.device, n: int = 8192) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, iters = time.perf_counter(), 20
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * iters / (time.perf_counter() - start) / 1e12


def time_steps(runner: ModelRunner, batch: Batch, iters: int) -> tuple[float, float]:
    """(mean ms per step, mean ms of host launch) over `iters` steps after two warm ones."""
    for _ in range(2):
        runner.launch(batch).wait()
    torch.cuda.synchronize()
    launch = 0.0
    start = time.perf_counter()
    for _ in range(iters):
        t0 = time.perf_counter()
        pending = runner.launch(batch)
        launch += time.perf_counter() - t0
        pending.wait()
    total = time.perf_counter() - start
    return total / iters * 1e3, launch / iters * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--max-tokens", type=int, default=2048, help="largest piecewise bucket")
    ap.add_argument("--num-kv-blocks", type=int, default=8192)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args(argv)
    config = EngineConfig(model=args.model, load_format="dummy", dtype="bfloat16", device="cuda",
                          max_model_len=8192, num_kv_blocks=args.num_kv_blocks, piecewise_max_tokens=0)
    engine = Engine(config)
    model, cache, device = engine.model, engine.kv_cache, engine.device
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free_before, _ = torch.cuda.mem_get_info(device)
    pieces = PiecewiseGraphs(model, cache, args.max_tokens)
    pieces.capture()
    torch.cuda.synchronize()
    free_after, _ = torch.cuda.mem_get_info(device)
    capture = {"buckets": len(pieces.buckets), "segments": model.model.num_segments,
               "graphs": len(pieces.buckets) * model.model.num_segments,
               "seconds": round(pieces.capture_seconds, 2),
               "memory_mib": round((free_before - free_after) / 2**20, 1)}
    eager = ModelRunner(model, cache)
    graphed = ModelRunner(model, cache, piecewise=pieces)
    tflops = gemm_tflops(device)
    params = sum(p.numel() for p in model.parameters() if p is not model.model.embed_tokens.weight)
    rows = []
    vocab = model.config.vocab_size
    for chunk, decodes, context in SHAPES:
        reqs = [synthetic_request(engine.allocator, f"d{i}", context, vocab) for i in range(decodes)]
        new = synthetic_request(engine.allocator, "p", chunk, vocab)
        batch = Batch(prefills=[PrefillChunk(new, 0, chunk, True)], decodes=reqs)
        tokens = chunk + decodes
        try:
            prep = eager.prepare(batch)
            with torch.inference_mode():
                want = model(prep.input_ids, prep.positions, cache.layers, prep.meta).float()
                got = graphed.forward(prep).float()
            err = ((got - want).abs().max() / want.abs().max()).item()
            same = sum(a == b for a, b in zip(eager.run(batch), graphed.run(batch), strict=True)) / (decodes + 1)
            eager_ms, eager_launch = time_steps(eager, batch, args.iters)
            graph_ms, graph_launch = time_steps(graphed, batch, args.iters)
            floor = 2 * params * tokens / (tflops * 1e12) * 1e3
            rows.append({"chunk": chunk, "decodes": decodes, "context": context, "tokens": tokens,
                         "bucket": pieces.bucket_for(tokens) if pieces.can_run(tokens) else None,
                         "graphed": graphed.last_run_graphed, "rel_max_err": err, "greedy_equal": same,
                         "eager_ms": round(eager_ms, 3), "eager_launch_ms": round(eager_launch, 3),
                         "graph_ms": round(graph_ms, 3), "graph_launch_ms": round(graph_launch, 3),
                         "speedup": round(eager_ms / graph_ms, 3), "flops_floor_ms": round(floor, 3),
                         "graph_vs_floor": round(graph_ms / floor, 2)})
        finally:
            for r in [*reqs, new]:
                engine.allocator.free(r)
    print(f"capture: {capture}; GEMM {tflops:.0f} TFLOPS")
    print(f"{'chunk':>6} {'dec':>4} {'T':>5} {'bucket':>6} {'err':>8} {'eq':>5} {'eager ms':>9} {'launch':>7} "
          f"{'graph ms':>9} {'launch':>7} {'x':>6} {'floor':>7}")
    for r in rows:
        print(f"{r['chunk']:>6} {r['decodes']:>4} {r['tokens']:>5} {str(r['bucket']):>6} {r['rel_max_err']:>8.1e} "
              f"{r['greedy_equal']:>5.2f} {r['eager_ms']:>9.2f} {r['eager_launch_ms']:>7.2f} {r['graph_ms']:>9.2f} "
              f"{r['graph_launch_ms']:>7.2f} {r['speedup']:>6.2f} {r['flops_floor_ms']:>7.2f}")
    result = {"what": __doc__.split("\n\n")[0], "date": datetime.date.today().isoformat(),
              "machine": {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__,
                          "python": platform.python_version()},
              "gemm_tflops": round(tflops, 1), "capture": capture, "shapes": rows}
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=1))
    bad = [r for r in rows if r["rel_max_err"] > 2e-2 or r["greedy_equal"] < 0.9]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
