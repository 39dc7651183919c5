"""Serving benchmark through HTTP, measured the way vLLM's figures in PEERS.md were: for each
engine config, start ``semipd serve`` (Llama-3.1-8B, dummy weights), wait for ``/health``,
run ``semipd bench sweep`` (streaming ``/v1/completions``, Azure conversation trace lengths with
prompts capped at 7000 and outputs at 1024 tokens, random token-id prompts, ``ignore_eos``,
Poisson arrivals, ``--duration`` seconds per rate, SLO 200 ms TTFT / 30 ms TPOT), stop the server.

    python benchmarks/bench_serving.py --configs unified,static88 --rates 12,16,20 --out-dir OUT

Writes ``OUT/<config>.json`` (the sweep's JSON) and ``OUT/<config>.log`` (the server's log).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--load-format", "dummy", "--num-kv-blocks", "16384", "--max-waiting", "100000", "--log-level", "warning"]
CONFIGS = {
    "unified": ["--mode", "unified", "--max-num-batched-tokens", "8192"],
    "unified-sync": ["--mode", "unified", "--max-num-batched-tokens", "8192", "--no-async-scheduling"],
    "static88": ["--mode", "semi-pd", "--controller", "static", "--initial-prefill-sm-percent", "66.67",
                 "--max-num-batched-tokens", "4096"],
    "static104": ["--mode", "semi-pd", "--controller", "static", "--initial-prefill-sm-percent", "78.8",
                  "--max-num-batched-tokens", "4096"],
    "slo88": ["--mode", "semi-pd", "--controller", "slo", "--initial-prefill-sm-percent", "66.67",
              "--monitoring-interval", "2", "--max-num-batched-tokens", "4096"],
}


def wait_healthy(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"no healthy server at {url} after {timeout:.0f} s")


@contextlib.contextmanager
def serving(config: str, args: argparse.Namespace, port: int, log_path: Path, root: Path = ROOT) -> Iterator[float]:
    """``semipd serve`` from checkout `root` with engine config `config` on `port` (its log in `log_path`),
    healthy within ``args.startup_timeout``; yields the start-up seconds and stops the server after."""
    with open(log_path, "w") as log:
        command = [sys.executable, "-m", "semipd", "serve", "--model", args.model, "--max-model-len",
                   str(args.max_model_len), *COMMON, *CONFIGS[config], "--port", str(port)]
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root)
        try:
            start = time.monotonic()
            wait_healthy(f"http://127.0.0.1:{port}", server, args.startup_timeout)
            yield time.monotonic() - start
        finally:
            server.terminate()
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()


def run_config(name: str, args: argparse.Namespace, port: int) -> dict:
    out = Path(args.out_dir)
    url = f"http://127.0.0.1:{port}"
    with serving(name, args, port, out / f"{name}.log") as startup:
        result = out / f"{name}.json"
        sweep = ["--base-url", url, "--dataset-name", "trace", "--trace-path", args.trace,
                 "--trace-max-input-len", str(args.max_input_len),
                 "--trace-max-output-len", str(args.max_output_len),
                 "--request-rates", args.rates, "--duration-per-rate", str(args.duration),
                 "--goodput", "ttft:200", "tpot:30", "--output-json", str(result), "--no-plot", "--disable-tqdm"]
        if args.token_range:
            sweep += ["--random-token-range", args.token_range]
        subprocess.run([sys.executable, "-m", "semipd", "bench", "sweep", *sweep], check=True, cwd=ROOT)
        return {"config": name, "startup_seconds": round(startup, 1), "result": str(result)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="unified,static88", help=f"comma-separated, of {sorted(CONFIGS)}")
    ap.add_argument("--model", default="llama-3.1-8b", help="preset (dummy weights)")
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--max-input-len", type=int, default=7000, help="cap on trace prompt lengths")
    ap.add_argument("--max-output-len", type=int, default=1024, help="cap on trace output lengths")
    ap.add_argument("--token-range", help="prompt token ids LO:HI (default: the bench client's)")
    ap.add_argument("--rates", default="12,16,20")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals per rate")
    ap.add_argument("--trace", default=str(ROOT.parent / "shared" / "traces" / "azure_llm_2023_conv.csv"))
    ap.add_argument("--out-dir", default="serving-results")
    ap.add_argument("--port", type=int, default=8100)
    ap.add_argument("--startup-timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    runs = []
    for i, name in enumerate(args.configs.split(",")):
        if name not in CONFIGS:
            ap.error(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
        try:
            runs.append(run_config(name, args, args.port + i))
        except Exception as exc:  # one failed config must not hide the others
            runs.append({"config": name, "error": f"{type(exc).__name__}: {exc}"})
            print(f"{name}: {runs[-1]['error']}", file=sys.stderr)
    (Path(args.out_dir) / "runs.json").write_text(json.dumps(runs, indent=1))
    return 0 if all("error" not in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
