"""Serving through HTTP, one server tree against another on the same GPU start: for each
``LABEL=ROOT:CONFIG`` run, start ``semipd serve`` from the checkout ROOT (so an older commit can be
the baseline) with a `bench_serving` engine CONFIG, measure a single request (512-token prompt,
256 output tokens, three in a row: TTFT and TPOT), then a `semipd bench sweep` over the Azure
conversation trace lengths (streaming ``/v1/completions``, ``ignore_eos``, Poisson arrivals), and
stop the server. The client is always this checkout's.

    python benchmarks/bench_http_paths.py --run new=.:unified --run base=../old:unified \\
        --rates 12,16 --duration 60 --out-dir OUT

Writes ``OUT/<label>.json`` (single-request summary + sweep) and ``OUT/<label>.log`` (server log).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench_serving import serving

ROOT = Path(__file__).resolve().parents[1]


def bench(url: str, out: Path, extra: list[str]) -> dict:
    subprocess.run([sys.executable, "-m", "semipd", "bench", "--base-url", url, "--output-json", str(out),
                    "--no-progress", *extra], check=True, cwd=ROOT)
    return json.loads(out.read_text())


def _summary(value: object) -> object:
    """`value` without its per-request records (the summaries stay small enough to keep)."""
    if isinstance(value, dict):
        return {k: _summary(v) for k, v in value.items() if k not in ("requests", "records")}
    if isinstance(value, list):
        return [_summary(v) for v in value]
    return value


def run(label: str, root: Path, config: str, args: argparse.Namespace, port: int) -> dict:
    out = Path(args.out_dir)
    url = f"http://127.0.0.1:{port}"
    with serving(config, args, port, out / f"{label}.log", root) as startup:
        result: dict = {"label": label, "root": str(root), "config": config,
                        "startup_seconds": round(startup, 1)}
        tokens = ["--random-token-range", args.token_range] if args.token_range else []
        if args.warmup_prompts:  # compile every kernel variant the load needs before measuring
            bench(url, out / f"{label}-warmup.json", [
                "--dataset-name", "trace", "--trace-path", args.trace, "--trace-max-input-len", "7000",
                "--trace-max-output-len", "1024", "--num-prompts", str(args.warmup_prompts),
                "--request-rate", "20", *tokens])
        single = bench(url, out / f"{label}-single.json", [
            "--dataset-name", "random", "--random-input-len", "512", "--random-output-len", "256",
            "--random-range-ratio", "0", "--num-prompts", "3", "--max-concurrency", "1", "--request-rate", "inf",
            *tokens])
        result["single"] = _summary(single.get("summary", single))
        sweep_out = out / f"{label}-sweep.json"
        subprocess.run([sys.executable, "-m", "semipd", "bench", "sweep", "--base-url", url, "--dataset-name",
                        "trace", "--trace-path", args.trace, "--trace-max-input-len", "7000",
                        "--trace-max-output-len", "1024", "--request-rates", args.rates,
                        "--duration-per-rate", str(args.duration), "--goodput", "ttft:300", "tpot:40",
                        "--output-json", str(sweep_out), "--no-plot", "--no-progress", *tokens],
                       check=True, cwd=ROOT)
        result["sweep"] = _summary(json.loads(sweep_out.read_text()))
        return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, help="LABEL=ROOT:CONFIG (repeat)")
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--rates", default="12,16")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--trace", default=str(ROOT.parent / "shared" / "traces" / "azure_llm_2023_conv.csv"))
    ap.add_argument("--out-dir", default="http-paths")
    ap.add_argument("--port", type=int, default=8200)
    ap.add_argument("--startup-timeout", type=float, default=600.0)
    ap.add_argument("--token-range", help="prompt token ids LO:HI (default: the bench client's)")
    ap.add_argument("--warmup-prompts", type=int, default=0,
                    help="trace requests at 20 req/s sent before measuring (not reported)")
    args = ap.parse_args(argv)
    args.trace = str(Path(args.trace).resolve())
    args.out_dir = str(Path(args.out_dir).resolve())
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    results = []
    for i, spec in enumerate(args.run):
        label, _, rest = spec.partition("=")
        root, _, config = rest.rpartition(":")
        try:
            results.append(run(label, Path(root).resolve(), config, args, args.port + i))
        except Exception as exc:  # one failed run must not hide the others
            results.append({"label": label, "error": f"{type(exc).__name__}: {exc}"})
            print(f"{label}: {results[-1]['error']}", file=sys.stderr)
    (Path(args.out_dir) / "results.json").write_text(json.dumps(results, indent=1))
    for r in results:
        if "error" in r:
            print(f"{r['label']}: {r['error']}")
            continue
        s = r["single"]
        print(f"{r['label']} ({r['config']}): startup {r['startup_seconds']} s; "
              f"single TTFT {s.get('median_ttft_ms')} ms, TPOT {s.get('median_tpot_ms')} ms")
        for point in r["sweep"].get("points", r["sweep"].get("results", [])):
            summ = point.get("summary", point)
            print("   ", {k: summ.get(k) for k in ("request_rate", "median_ttft_ms", "p90_ttft_ms", "median_tpot_ms",
                                                 "p99_tpot_ms", "output_throughput", "slo_attainment")})
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
