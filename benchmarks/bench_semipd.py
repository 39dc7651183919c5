"""Semi-PD engine benchmark on one GPU (Llama-3.1-8B dummy weights, bf16).

    python benchmarks/bench_semipd.py --parts micro,mixed --json out.json [--quick]

micro (one Semi-PD engine, splits 16..112 prefill SMs):
- isolation: the engine's decode step (batch 64, context 1024) alone and beside back-to-back
  2048-token prefill iterations on the other partition, per split, next to the raw slowdowns
  of ``gpu-facts/llama8b_sm_scaling.json`` (linear layers only); the engine's mean step time
  (which counts stalled steps) should stay within 1.1x of the raw figure (``within_1_1x_raw``);
- GIL: the same at P64 under several ``sys.setswitchinterval`` values;
- switch latency under load: Azure-trace requests while a re-partition is requested every
  100 ms; request -> neither worker launches on the old split any more (both, and per
  worker), and request -> the work they left there finished on the GPU (the drain), with the
  diagnostics of ``launch_trace.py`` (long prefill launch stretches, thread stacks, GC pauses).

mixed: the Azure conversation trace's lengths (prompts capped at 7000, outputs at 1024,
random token ids, ignore_eos), Poisson arrivals at each ``--rates`` for ``--duration`` s,
driven in-process, per engine config (``unified``: 8192-token mixed batches as vLLM;
``static:P`` = Semi-PD at P prefill SMs with ``--semipd-prefill-tokens`` per prefill iteration,
``slo:P`` = Semi-PD starting at P with the SLO controller; a ``:noborrow`` suffix keeps decode
off prefill's idle SMs). TTFT is measured from the
scheduled arrival to the first streamed token as the driver receives it; TPOT = (last -
first) / (tokens - 1). SLO attainment: share of all requests with TTFT and TPOT within the
targets (unfinished ones miss). vLLM 0.26's figures on the same GPU are stored alongside.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semipd.engine import Engine, EngineConfig, SamplingParams
from semipd.engine.semi_pd.config import SemiPDConfig
from semipd.engine.semi_pd.engine import SemiPDEngine
from semipd.engine.semi_pd.probe import interference
from semipd.workload import WorkloadRequest, load_azure_trace, poisson_arrivals

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SLOS = ((0.2, 0.03), (0.3, 0.04), (0.5, 0.05))
PEERS_VLLM = {  # /work/shared/PEERS.md: vLLM 0.26.0, same H100, same trace lengths, 30 s per rate
    12: {"ttft_ms": [59, 129, 183], "tpot_ms": [11.7, 14.1, 20.6], "slo_200_30": 0.99},
    16: {"ttft_ms": [78, 220, 365], "tpot_ms": [16.7, 28.1, 38.1], "slo_200_30": 0.82},
    20: {"ttft_ms": [135, 322, 610], "tpot_ms": [28.8, 52.1, 74.2], "slo_200_30": 0.45},
}


def environment() -> dict[str, Any]:
    import triton

    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
            "triton": triton.__version__, "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d"),
            "CUDA_DEVICE_MAX_CONNECTIONS": os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS")}


def allocator_stats() -> dict[str, int]:
    """Caching-allocator counters: each retry released cached blocks (a device-wide synchronisation)."""
    stats = torch.cuda.memory_stats()
    return {k: int(stats.get(k, 0)) for k in ("num_alloc_retries", "num_device_alloc", "num_device_free")}


def free_device_memory() -> None:
    """Return the memory of engines no longer referenced (call after dropping the last reference)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# -- load driving ----------------------------------------------------------------------------------
@dataclass
class Record:
    arrival: float
    num_out: int = 0
    first: float | None = None
    last: float | None = None
    finished: bool = False


def make_requests(trace: list[WorkloadRequest], rate: float, duration: float, vocab: int,
                  seed: int) -> list[tuple[float, list[int], int]]:
    """(arrival s, prompt ids, output tokens): trace lengths drawn at random, Poisson arrivals."""
    rng = np.random.default_rng(seed)
    times = poisson_arrivals(rate, rng, duration=duration)
    picks = rng.integers(0, len(trace), len(times))
    return [(float(t), rng.integers(0, vocab, trace[i].input_len).tolist(), trace[i].output_len)
            for t, i in zip(times, picks, strict=True)]


def drive(engine: Any, reqs: list[tuple[float, list[int], int]], drain_s: float) -> tuple[list[Record], float]:
    """Run `reqs` (adds from a feeder thread for Semi-PD, at step boundaries for the unified
    engine, which is not thread-safe); returns the records and the wall time."""
    threaded = isinstance(engine, SemiPDEngine)
    records = {f"q{i}": Record(t) for i, (t, _, _) in enumerate(reqs)}
    start = time.monotonic()
    deadline = start + (reqs[-1][0] if reqs else 0) + drain_s
    next_add = [0]

    def add(i: int) -> None:
        _, prompt, out_len = reqs[i]
        engine.add_request(f"q{i}", prompt, SamplingParams(temperature=0.0, max_tokens=out_len, ignore_eos=True))

    def feed() -> None:
        for i, (t, _, _) in enumerate(reqs):
            delay = start + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            add(i)
            next_add[0] = i + 1

    feeder = threading.Thread(target=feed, daemon=True) if threaded else None
    if feeder is not None:
        feeder.start()
    while True:
        now = time.monotonic()
        if not threaded:
            while next_add[0] < len(reqs) and start + reqs[next_add[0]][0] <= now:
                add(next_add[0])
                next_add[0] += 1
        if next_add[0] == len(reqs) and not engine.has_unfinished():
            break
        if now > deadline:
            for rid, rec in records.items():
                if not rec.finished:
                    engine.abort(rid)
            break
        if not engine.has_unfinished():
            time.sleep(0.0005)
            continue
        outs = engine.step()
        t = time.monotonic() - start
        for out in outs:
            rec = records[out.rid]
            if out.new_token_ids:
                rec.first = t if rec.first is None else rec.first
                rec.last = t
                rec.num_out += len(out.new_token_ids)
            rec.finished = rec.finished or out.finished
    if feeder is not None:
        feeder.join()
    while engine.has_unfinished():  # aborted leftovers: let the workers free their blocks
        engine.step()
    return list(records.values()), time.monotonic() - start


def summarize(records: list[Record]) -> dict[str, Any]:
    done = [r for r in records if r.finished and r.first is not None]
    ttft = np.array([r.first - r.arrival for r in done])
    tpot = np.array([(r.last - r.first) / (r.num_out - 1) for r in done if r.num_out > 1])

    def pct(a: np.ndarray) -> list[float]:
        return [round(1000 * float(np.percentile(a, q)), 2) for q in (50, 90, 99)] if len(a) else []

    span = max((r.last for r in done), default=0.0) - min((r.arrival for r in records), default=0.0)
    out_tokens = sum(r.num_out for r in done)
    slo = {}
    for t_ttft, t_tpot in SLOS:
        ok = sum(1 for r in done if r.first - r.arrival <= t_ttft
                 and (r.num_out < 2 or (r.last - r.first) / (r.num_out - 1) <= t_tpot))
        slo[f"{int(t_ttft * 1000)}_{int(t_tpot * 1000)}"] = round(ok / max(1, len(records)), 4)
    return {"requests": len(records), "finished": len(done), "ttft_ms_p50_p90_p99": pct(ttft),
            "tpot_ms_p50_p90_p99": pct(tpot), "output_tokens_per_s": round(out_tokens / max(span, 1e-9), 1),
            "requests_per_s": round(len(done) / max(span, 1e-9), 3), "slo_attainment": slo}


# -- parts -----------------------------------------------------------------------------------------
def micro(args: argparse.Namespace, trace: list[WorkloadRequest], out: dict[str, Any],
          save: Callable[[], None]) -> None:
    """Fill `out` with the isolation, GIL and switch-latency measurements, calling `save()` after each."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    splits = tuple(int(p) for p in args.splits.split(","))
    engine = SemiPDEngine(EngineConfig(
        model=args.model, load_format="dummy", dtype="bfloat16", device="cuda", max_num_seqs=64,
        max_num_batched_tokens=2048, max_model_len=4096, gpu_memory_utilization=0.85, mode="semi-pd",
        semipd=SemiPDConfig(controller="static", initial_prefill_sm_percent=100 * splits[0] / sms,
                            reachable_prefill_sms=splits)))
    out.update(startup=engine.get_status()["cuda_graphs"],
               CUDA_DEVICE_MAX_CONNECTIONS=os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS"))
    seconds = 0.5 if args.quick else 1.0
    raw = json.loads(Path(args.raw_facts).read_text())["together"] if Path(args.raw_facts).is_file() else {}
    steps = args.micro.split(",")
    try:
        rows = []
        for p in splits if "isolation" in steps else ():
            res = interference(engine, p, 2048, 64, 1024, seconds)
            r = raw.get(f"P{p}_D{sms - p}")
            if r:
                res["raw_slowdown"] = r["decode64_ms"] / r["decode64_alone_ms"]
                res["within_1_1x_raw"] = res["slowdown_mean"] <= 1.1 * res["raw_slowdown"]
            rows.append(res)
            print(json.dumps(res), flush=True)
        out["isolation"] = rows
        save()
        saved = sys.getswitchinterval()
        gil = []
        for interval in (0.005, 0.0002) if "gil" in steps and 64 in splits else ():
            sys.setswitchinterval(interval)
            res = interference(engine, 64, 2048, 64, 1024, seconds)
            gil.append({"switch_interval_s": interval, **res})
            print(json.dumps(gil[-1]), flush=True)
        sys.setswitchinterval(saved)
        out["gil"] = gil
        save()
        if "switch" in steps:
            out["switch_under_load"] = switch_latency(engine, trace, splits, args)
    finally:
        engine.stop()
        engine = None
        free_device_memory()


def switch_latency(engine: SemiPDEngine, trace: list[WorkloadRequest], splits: tuple[int, ...],
                   args: argparse.Namespace) -> dict[str, Any]:
    short = [WorkloadRequest(r.arrival_time, min(r.input_len, 2000), min(r.output_len, 256)) for r in trace]
    reqs = make_requests(short, 6.0, 8.0 if args.quick else 30.0, engine.model_config.vocab_size, 1)
    pm = engine.partitions
    stop = threading.Event()
    drains: list[float] = []

    def switcher() -> None:
        """Every 100 ms a new split; once both workers moved, wait for the work they left on the
        old split's streams: request -> that work done on the GPU is the drain time."""
        k = 0
        while not stop.wait(0.1):
            k += 1
            old = pm.partitions()[pm.grid.prefill_sms(pm.current_allocation())]
            t0 = time.perf_counter()
            pm.request_sm_reallocation(pm.grid.allocation(splits[(3 * k) % len(splits)]))
            if not pm.wait_switched(timeout=5.0):
                continue
            events = [torch.cuda.Event() for _ in range(2)]
            events[0].record(old.prefill_stream)
            events[1].record(old.decode_stream)
            for event in events:
                event.synchronize()
            drains.append(time.perf_counter() - t0)

    from launch_trace import LaunchTrace  # a sibling module (GPU only; not needed by the CPU tests)

    thread = threading.Thread(target=switcher, daemon=True)
    with LaunchTrace(engine) as trace:
        thread.start()
        try:
            records, wall = drive(engine, reqs, 60.0)
        finally:
            stop.set()
            thread.join()
    st = pm.get_status()
    return {"requests": len(reqs), "finished": sum(r.finished for r in records), "seconds": round(wall, 1),
            "switches": st["num_reallocations"], "switch_latency_ms": st.get("switch_latency_ms"),
            "ack_latency_ms": st.get("ack_latency_ms"),
            "prefill_acks_over_5ms": sorted((round(1000 * x, 2) for x in pm.ack_latencies["prefill"] if x > 0.005),
                                            reverse=True),
            "warm_up_seconds": round(engine.warm_up_seconds, 2), **trace.results(),
            "drain_ms": {"p50": 1000 * float(np.percentile(drains, 50)), "p99": 1000 * float(np.percentile(drains, 99)),
                         "max": 1000 * max(drains), "count": len(drains)} if drains else None,
            "prefill_iteration_ms_p50":
                engine.get_status()["workers"]["prefill"]["iteration_ms_p50"],
            "blocks_all_free": engine.allocator.num_free == engine.allocator.num_blocks,
            "allocator_after": allocator_stats()}


def build(config: str, args: argparse.Namespace) -> Any:
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    common = dict(model=args.model, load_format="dummy", dtype="bfloat16", device="cuda", max_num_seqs=256,
                  max_model_len=8192, num_kv_blocks=args.kv_blocks)
    if config == "unified":
        return Engine(EngineConfig(max_num_batched_tokens=8192, **common))
    kind, _, rest = config.partition(":")
    p, _, option = rest.partition(":")
    if kind not in ("static", "slo", "off") or option not in ("", "noborrow"):
        raise ValueError(f"unknown engine config {config!r}")
    sp = SemiPDConfig(controller=kind, initial_prefill_sm_percent=100 * int(p or 64) / sms,
                      reachable_prefill_sms=(int(p),) if kind == "static" else None,
                      monitoring_interval=2.0, cooldown_seconds=4.0, decode_borrows_idle_prefill=option != "noborrow")
    return SemiPDEngine(EngineConfig(max_num_batched_tokens=args.semipd_prefill_tokens, mode="semi-pd", semipd=sp,
                                     **common))


def mixed(args: argparse.Namespace, trace: list[WorkloadRequest], out: dict[str, Any],
          save: Callable[[], None]) -> None:
    """Fill `out` per engine config and rate, calling `save()` after each run."""
    for config in args.configs.split(","):
        t0 = time.perf_counter()
        try:
            engine = build(config, args)
        except Exception as exc:
            traceback.print_exc()
            out[config] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        runs: dict[str, Any] = {"startup_seconds": round(time.perf_counter() - t0, 1)}
        out[config] = runs
        try:
            for rate in (float(r) for r in args.rates.split(",")):
                reqs = make_requests(trace, rate, args.duration, engine.model_config.vocab_size, int(rate))
                records, wall = drive(engine, reqs, args.drain)
                res = {"rate": rate, "seconds": round(wall, 1), **summarize(records)}
                if isinstance(engine, SemiPDEngine):
                    st = engine.get_status()
                    res["allocation"] = st["allocation"]
                    res["controller"] = {k: st["controller"].get(k) for k in ("mode", "statistics")}
                    res["workers"] = st["workers"]
                    res["switches"] = {k: st["partitions"].get(k) for k in ("num_reallocations", "switch_latency_ms")}
                res["allocator"] = allocator_stats()
                runs[f"{rate:g}"] = res
                print(config, json.dumps(res), flush=True)
                save()
        except Exception as exc:
            traceback.print_exc()
            runs["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            if isinstance(engine, SemiPDEngine):
                engine.stop()
            engine = None
            free_device_memory()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Semi-PD engine benchmark (GPU)")
    ap.add_argument("--parts", default="micro,mixed")
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--micro", default="isolation,gil,switch", help="which micro measurements to run")
    ap.add_argument("--splits", default="16,32,48,64,80,96,112", help="prefill SM counts of the micro engine")
    ap.add_argument("--trace", default=str(SHARED / "traces" / "azure_llm_2023_conv.csv"))
    ap.add_argument("--raw-facts", default=str(SHARED / "gpu-facts" / "llama8b_sm_scaling.json"))
    ap.add_argument("--configs", default="unified,static:88", help="unified, static:P, slo:P (comma-separated)")
    ap.add_argument("--rates", default="12,16,20")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals per rate")
    ap.add_argument("--drain", type=float, default=20.0, help="seconds allowed after the last arrival")
    ap.add_argument("--semipd-prefill-tokens", type=int, default=4096,
                    help="Semi-PD prefill token budget per iteration (the unified engine keeps 8192)")
    ap.add_argument("--kv-blocks", type=int, default=16384, help="KV blocks of 16 tokens (same for every engine)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not torch.cuda.is_available():
        print("bench_semipd: needs a CUDA GPU", file=sys.stderr)
        return 2
    trace = load_azure_trace(args.trace, max_input_len=7000, max_output_len=1024)
    results: dict[str, Any] = {"environment": environment(), "args": vars(args), "peers_vllm": PEERS_VLLM}

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))

    for part, fn in (("micro", micro), ("mixed", mixed)):
        if part in args.parts.split(","):
            t0 = time.perf_counter()
            out = results[part] = {}
            try:
                fn(args, trace, out, save)
            except Exception as exc:
                traceback.print_exc()
                out["error"] = f"{type(exc).__name__}: {exc}"
            print(f"[{part}] {time.perf_counter() - t0:.1f} s", flush=True)
            save()
    print(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
