"""`semipd bench`: load generator for any OpenAI-compatible server (flags follow ``vllm bench serve``).

``semipd bench [run] ...`` runs one benchmark; ``semipd bench sweep --request-rates 2,4,8 ...``
runs one per rate and reports SLO attainment and goodput against rate.

Before sending, the server is asked for its model, context length and (ours) vocabulary and
status (`semipd.bench.server_info`); requests are kept within those limits (`semipd.bench.limits`).
Exit status: 0 when the benchmark ran, 1 when every request failed or the run stopped early
because the first ones all failed for one cause, 2 for a usage error, 130 on Ctrl-C (what
finished by then is still reported and written).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import sys
from collections.abc import Callable
from typing import Any

from semipd.bench.client import BACKENDS, Endpoint, api_url
from semipd.bench.datasets import (
    DEFAULT_TOKEN_RANGE,
    PROMPT_FORMATS,
    BenchRequest,
    PromptMaker,
    random_requests,
    sharegpt_requests,
    trace_requests,
)
from semipd.bench.goodput import parse_goodput
from semipd.bench.limits import check_random_lengths, fit_to_context, token_range_for
from semipd.bench.report import format_failures, format_summary, result_json, write_json
from semipd.bench.runner import INTERRUPTED, RunConfig, arrival_offsets, arrival_rng, dataset_rng, run_benchmark
from semipd.bench.server_info import ServerInfo, discover, server_status
from semipd.bench.stats import parse_metric_names, parse_percentiles, summarize
from semipd.bench.sweep import find_capacity, format_capacity, format_sweep_table, parse_rates, run_sweep
from semipd.bench.tokens import TokenCounter, load_counter
from semipd.outputs import check_output_path

DATASETS = ("random", "trace", "sharegpt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `bench` flags to `parser` (the subparser `semipd` made for "bench")."""
    parser.add_argument("mode", nargs="?", choices=("run", "sweep"), default="run",
                        help="run: one benchmark (default); sweep: one run per --request-rates entry")
    srv = parser.add_argument_group("server")
    srv.add_argument("--base-url", help="server base URL, e.g. http://127.0.0.1:8000 (overrides --host/--port)")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--backend", choices=tuple(BACKENDS), default="openai",
                     help="openai: /v1/completions; openai-chat: /v1/chat/completions")
    srv.add_argument("--endpoint", help="API path (default: the backend's)")
    srv.add_argument("--model", help="model name (default: the first of /v1/models)")
    srv.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                     help="bearer token (default: $OPENAI_API_KEY)")
    srv.add_argument("--request-timeout", type=float, default=6 * 3600.0, help="seconds per request")
    data = parser.add_argument_group("dataset")
    data.add_argument("--dataset-name", "--dataset", dest="dataset_name", choices=DATASETS, default="random")
    data.add_argument("--dataset-path", help="ShareGPT JSON (sharegpt) or trace CSV (trace)")
    data.add_argument("--num-prompts", type=int, default=1000, help="requests to send (per rate in a sweep)")
    data.add_argument("--random-input-len", type=int, default=1024)
    data.add_argument("--random-output-len", type=int, default=128)
    data.add_argument("--random-range-ratio", type=float, default=0.0,
                      help="lengths uniform in [L(1-r), L(1+r)], 0 <= r < 1")
    data.add_argument("--random-prompt-format", choices=PROMPT_FORMATS,
                      help="ids: token-id prompts of exact length (default on /v1/completions); "
                      "text: random words (default, and the only choice, for openai-chat)")
    data.add_argument("--random-token-range",
                      help=f"LOW:HIGH token ids for random prompts (default {DEFAULT_TOKEN_RANGE[0]}:"
                           f"{DEFAULT_TOKEN_RANGE[1]}; capped to --tokenizer's and the server's vocabulary)")
    data.add_argument("--trace-path", help="Azure trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens), or a "
                      "public trace fetched on first use: azure-conv-2023, azure-code-2023")
    data.add_argument("--time-scale", type=float, default=1.0, help="trace time multiplier (0.5 = twice as fast)")
    data.add_argument("--trace-max-input-len", type=int, help="cap trace prompt lengths")
    data.add_argument("--trace-max-output-len", type=int, help="cap trace output lengths")
    data.add_argument("--trace-start-offset", type=float, default=0.0, help="skip this many seconds of the trace")
    data.add_argument("--sharegpt-output-len", type=int, help="fixed output length instead of the reply's")
    data.add_argument("--tokenizer", help="tokenizer.json (or its folder) for exact text token counts")
    load = parser.add_argument_group("load")
    load.add_argument("--request-rate", default="inf",
                      help="req/s (Poisson, or gamma with --burstiness); inf = all at once; trace = trace timestamps")
    load.add_argument("--use-trace-timestamps", action="store_true", help="same as --request-rate trace")
    load.add_argument("--burstiness", type=float, default=1.0, help="gamma shape: 1 Poisson, <1 burstier")
    load.add_argument("--max-concurrency", type=int, help="most requests in flight at once")
    load.add_argument("--seed", type=int, default=0)
    load.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                      help="ask the server to ignore EOS so output lengths are honoured")
    load.add_argument("--temperature", type=float, default=0.0)
    load.add_argument("--fail-fast", type=int, default=10, metavar="N",
                      help="stop when the first N requests to finish all failed for one cause (0: never)")
    rep = parser.add_argument_group("report")
    rep.add_argument("--goodput", nargs="+", metavar="KEY:MS", help="SLOs, e.g. ttft:200 tpot:30 [e2el:5000]")
    rep.add_argument("--percentile-metrics", default="ttft,tpot,itl,e2el")
    rep.add_argument("--metric-percentiles", default="50,90,99", help="besides mean and median")
    rep.add_argument("--output-json", help="result file (sweep default: semipd-sweep.json)")
    rep.add_argument("--disable-tqdm", "--no-progress", dest="no_progress", action="store_true",
                     help="no live progress bar")
    swp = parser.add_argument_group("sweep")
    swp.add_argument("--request-rates", help="comma-separated rates, e.g. 2,4,8,12,16")
    swp.add_argument("--duration-per-rate", type=float, help="seconds of arrivals per rate (instead of --num-prompts)")
    swp.add_argument("--attainment-target", type=float, default=0.9)
    swp.add_argument("--plot", help="PNG path (default: the JSON path with .png)")
    swp.add_argument("--no-plot", action="store_true")


def run(args: argparse.Namespace) -> int:
    try:
        check_output_path(args.output_json, "--output-json")  # before the run, not after it
        if args.mode == "sweep" and not args.no_plot:
            check_output_path(args.plot, "--plot")
        return _sweep(args) if args.mode == "sweep" else _run_once(args)
    except ValueError as exc:
        print(f"semipd bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("semipd bench: interrupted", file=sys.stderr)
        return 130


def _run_once(args: argparse.Namespace) -> int:
    if args.request_rates or args.duration_per_rate is not None:
        raise ValueError("--request-rates and --duration-per-rate belong to `semipd bench sweep`")
    rate = _request_rate(args)
    slos = parse_goodput(args.goodput or [])
    percentiles = parse_percentiles(args.metric_percentiles)
    metrics = parse_metric_names(args.percentile_metrics)
    config = _run_config(args)
    info, endpoint, build = _prepare(args)
    requests = build(args.num_prompts)
    arrivals = arrival_offsets(requests, rate, args.burstiness, arrival_rng(args.seed))
    rate_text = "trace timestamps" if rate is None else f"{rate:g} req/s, burstiness {args.burstiness:g}"
    print(f"{len(requests)} {args.dataset_name} requests to {endpoint.model} at {endpoint.url}, {rate_text}, "
          f"max concurrency {args.max_concurrency or 'unlimited'}")
    result = run_benchmark(endpoint, requests, arrivals, config)
    summary = summarize(result.records, result.duration, slos, percentiles, metrics)
    if args.output_json:
        settings = {**_settings(args, endpoint, info), "stopped": result.stopped}
        write_json(args.output_json, result_json(summary, result.records, settings))
    print(format_summary(summary, args.max_concurrency))
    failures = format_failures(result.records)
    if failures:
        print(failures)
    if args.output_json:
        print(f"wrote {args.output_json}")
    return _exit_status(result.stopped, summary.num_requests > 0 and summary.completed == 0)


def _exit_status(stopped: str, all_failed: bool) -> int:
    """130 after Ctrl-C, 1 when the run stopped early or every request failed (saying so), else 0."""
    if stopped == INTERRUPTED:
        print(f"semipd bench: {stopped}; the requests that finished are reported above", file=sys.stderr)
        return 130
    if stopped:
        print(f"semipd bench: stopped early: {stopped}", file=sys.stderr)
        return 1
    if all_failed:
        print("semipd bench: every request failed (causes above)", file=sys.stderr)
        return 1
    return 0


def _sweep(args: argparse.Namespace) -> int:
    if not args.request_rates:
        raise ValueError("sweep needs --request-rates, e.g. --request-rates 2,4,8")
    if args.use_trace_timestamps or args.request_rate != "inf":
        raise ValueError("sweep sets the rate itself: drop --request-rate/--use-trace-timestamps")
    if not args.goodput:
        raise ValueError("sweep needs SLOs: --goodput ttft:MS tpot:MS")
    if args.duration_per_rate is not None and not args.duration_per_rate > 0:
        raise ValueError(f"--duration-per-rate must be > 0, got {args.duration_per_rate}")
    if not 0.0 < args.attainment_target <= 1.0:
        raise ValueError(f"--attainment-target must be in (0, 1], got {args.attainment_target}")
    rates = parse_rates(args.request_rates)
    slos = parse_goodput(args.goodput)
    percentiles = parse_percentiles(args.metric_percentiles)
    config = _run_config(args)
    info, endpoint, build_requests = _prepare(args)
    base_url = args.base_url or f"http://{args.host}:{args.port}"
    per_rate = f"{args.duration_per_rate:g} s" if args.duration_per_rate else f"{args.num_prompts} requests"
    print(f"sweep over {', '.join(f'{r:g}' for r in rates)} req/s, {per_rate} each, "
          f"{args.dataset_name} requests to {endpoint.model} at {endpoint.url}")
    points = run_sweep(
        endpoint, rates, build_requests, slos, config,
        seed=args.seed, burstiness=args.burstiness,
        num_prompts=None if args.duration_per_rate else args.num_prompts,
        duration_per_rate=args.duration_per_rate, percentiles=percentiles,
        on_point=lambda p: print(f"rate {p.rate:g}: attainment {p.summary.slo_attainment:.3f}, "
                                 f"goodput {p.summary.request_goodput:.2f} req/s, {p.summary.failed} failed"),
        server_status=(lambda: server_status(base_url, args.api_key)) if info.is_ours else None,
    )
    if not points:
        return _exit_status(INTERRUPTED, False)
    capacity = find_capacity(points, args.attainment_target)
    print(format_sweep_table(points))
    for point in points:
        for error, n in point.errors.items():
            print(f"rate {point.rate:g}: {n} failed: {error}")
    print(format_capacity(capacity, args.attainment_target, slos))
    json_path = args.output_json or "semipd-sweep.json"
    write_json(json_path, {
        **_settings(args, endpoint, info),
        "attainment_target": args.attainment_target,
        "capacity": {"highest_rate": capacity.highest_rate, "interpolated_rate": capacity.interpolated_rate,
                     "all_met": capacity.all_met},
        "points": [p.to_dict() for p in points],
    })
    print(f"wrote {json_path}")
    if not args.no_plot:
        from semipd.bench.plot import plot_sweep

        png = args.plot or os.path.splitext(json_path)[0] + ".png"
        try:
            print(f"wrote {plot_sweep(points, args.attainment_target, capacity, png)}")
        except ValueError as exc:
            print(f"semipd bench: no plot: {exc}", file=sys.stderr)
    last = points[-1]
    return _exit_status(last.stopped, last.all_failed)


def _request_rate(args: argparse.Namespace) -> float | None:
    """The rate in req/s (inf allowed), or None for the trace's own timestamps."""
    if args.use_trace_timestamps or args.request_rate == "trace":
        if args.dataset_name != "trace":
            raise ValueError("trace timestamps need --dataset-name trace")
        return None
    try:
        rate = float(args.request_rate)
    except ValueError:
        raise ValueError(f"--request-rate must be a number, inf or trace, got {args.request_rate!r}") from None
    if not rate > 0:
        raise ValueError(f"--request-rate must be > 0, got {args.request_rate}")
    return rate


def _run_config(args: argparse.Namespace) -> RunConfig:
    if args.fail_fast < 0:
        raise ValueError(f"--fail-fast must be >= 0, got {args.fail_fast}")
    return RunConfig(max_concurrency=args.max_concurrency, request_timeout_s=args.request_timeout,
                     show_progress=not args.no_progress, fail_fast_after=args.fail_fast or None)


def _prepare(args: argparse.Namespace) -> tuple[ServerInfo, Endpoint, Callable[[int], list[BenchRequest]]]:
    """Check the dataset flags, ask the server about itself, and make the request builder."""
    if args.num_prompts < 1:
        raise ValueError(f"--num-prompts must be >= 1, got {args.num_prompts}")
    counter = load_counter(args.tokenizer)
    prompt_format, token_range = _prompt_spec(args, counter)
    ids = args.dataset_name != "sharegpt" and prompt_format == "ids"
    base_url = args.base_url or f"http://{args.host}:{args.port}"
    info = discover(base_url, args.api_key, args.model, probe_token_id=(token_range or DEFAULT_TOKEN_RANGE)[1] - 1
                    if ids else None)
    endpoint = Endpoint(url=api_url(base_url, args.endpoint or BACKENDS[args.backend]), model=info.model,
                        chat=args.backend == "openai-chat", api_key=args.api_key, ignore_eos=args.ignore_eos,
                        temperature=args.temperature)
    token_range, note = token_range_for(token_range, info.vocab_size if ids else None)
    if note:
        print(f"note: {note}")
    args.random_token_range = f"{token_range[0]}:{token_range[1]}"  # what the result file records
    return info, endpoint, _request_builder(args, counter, PromptMaker(prompt_format, token_range, counter),
                                            info.max_model_len)


def _request_builder(args: argparse.Namespace, counter: TokenCounter, maker: PromptMaker,
                     max_model_len: int | None) -> Callable[[int], list[BenchRequest]]:
    """A function n -> n requests of the chosen dataset (same seed, same requests), within the
    server's context: random lengths that cannot fit are refused, other prompts are shortened."""
    if args.dataset_name == "sharegpt":
        if not args.dataset_path:
            raise ValueError("--dataset-name sharegpt needs --dataset-path (a ShareGPT JSON file)")

        def make(n: int) -> list[BenchRequest]:
            return sharegpt_requests(args.dataset_path, n, dataset_rng(args.seed), counter,
                                     output_len=args.sharegpt_output_len)
    elif args.dataset_name == "random":
        check_random_lengths(args.random_input_len, args.random_output_len, args.random_range_ratio, max_model_len)

        def make(n: int) -> list[BenchRequest]:
            return random_requests(n, args.random_input_len, args.random_output_len, args.random_range_ratio,
                                   dataset_rng(args.seed), maker)
    else:
        path = args.trace_path or args.dataset_path
        if not path:
            raise ValueError("--dataset-name trace needs --trace-path (an Azure trace CSV)")

        def make(n: int) -> list[BenchRequest]:
            requests = trace_requests(path, n, dataset_rng(args.seed), maker, time_scale=args.time_scale,
                                      max_input_len=args.trace_max_input_len,
                                      max_output_len=args.trace_max_output_len, start_offset_s=args.trace_start_offset)
            if len(requests) < n:
                raise ValueError(f"trace {path} has only {len(requests)} requests after the offset, {n} needed")
            return requests

    noted: set[int] = set()

    def build(n: int) -> list[BenchRequest]:
        requests, shortened = fit_to_context(make(n), max_model_len)
        if shortened and n not in noted:
            noted.add(n)
            print(f"note: {shortened} of {n} prompts shortened to fit the server's max_model_len of "
                  f"{max_model_len} tokens with their outputs")
        return requests

    return build


def _prompt_spec(args: argparse.Namespace, counter: TokenCounter) -> tuple[str, tuple[int, int] | None]:
    """The prompt format and the token range asked for (None: the default), capped to --tokenizer's vocabulary."""
    chat = args.backend == "openai-chat"
    prompt_format = args.random_prompt_format or ("text" if chat else "ids")
    if chat and prompt_format == "ids":
        raise ValueError("--backend openai-chat takes text prompts: use --random-prompt-format text")
    if args.random_token_range is None:
        requested = None
    else:
        low_text, sep, high_text = args.random_token_range.partition(":")
        try:
            low, high = int(low_text), int(high_text)
        except ValueError:
            raise ValueError(f"--random-token-range must be LOW:HIGH, got {args.random_token_range!r}") from None
        if not sep:
            raise ValueError(f"--random-token-range must be LOW:HIGH, got {args.random_token_range!r}")
        requested = (low, high)
    if counter.vocab_size is not None:
        low, high = requested or DEFAULT_TOKEN_RANGE
        requested = (low, min(high, counter.vocab_size))
    if requested is not None and not 0 <= requested[0] < requested[1]:
        raise ValueError(f"--random-token-range {requested[0]}:{requested[1]} is empty (after capping to the "
                         "tokenizer's vocabulary)")
    return prompt_format, requested


def _settings(args: argparse.Namespace, endpoint: Endpoint, info: ServerInfo) -> dict[str, Any]:
    """Run settings for the JSON result (the API key left out; inf written as "inf"), and what the
    server told about itself: its limits, and its status before the run when it is ours."""
    settings: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                                "model": endpoint.model, "url": endpoint.url}
    for key, value in sorted(vars(args).items()):
        if key in ("api_key", "command") or key in settings:
            continue
        settings[key] = "inf" if isinstance(value, float) and math.isinf(value) else value
    settings["server"] = {"max_model_len": info.max_model_len, "vocab_size": info.vocab_size, "ours": info.is_ours}
    settings["server_status"] = info.status
    return settings
