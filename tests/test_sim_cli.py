"""`semipd simulate`, `semipd demo` and their reports."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from semipd.cli import build_parser, main
from semipd.sim.cli import DEFAULT_POLICIES, build_workload, parse_length
from semipd.sim.report import PlotUnavailableError, attainment_between, plot_timelines, policy_table
from semipd.sim.results import CycleRecord, RequestRecord, SimResult
from semipd.slo.constraints import SLOConstraints
from semipd.workload import LengthDist

REPO = Path(__file__).resolve().parents[1]
SLO = SLOConstraints(ttft_target_ms=200.0, tpot_target_ms=30.0)
SUMMARY_KEYS = {"slo_attainment", "ttft_attainment", "tpot_attainment", "ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms",
                "tpot_p50_ms", "tpot_p90_ms", "tpot_p99_ms", "throughput_rps", "output_tokens_per_s", "goodput_rps",
                "num_reallocations", "num_finished", "num_aborted", "num_preemptions"}


def _parse(*argv: str):
    return build_parser(["simulate", *argv]).parse_args(["simulate", *argv])


def _fake_result(policy: str, ttfts: list[float], split: float = 70.0) -> SimResult:
    requests = [RequestRecord(rid=str(i), arrival=float(i), first_token=i + t / 1e3, completion=i + 1.0,
                              input_len=100, output_len=10, ttft_ms=t, tpot_ms=20.0, finished=True, preemptions=0)
                for i, t in enumerate(ttfts)]
    timeline = [CycleRecord(time=5.0 * k, prefill_percentage=split - 10 * (k > 1), decode_percentage=100 - split,
                            ttft_p90_ms=100.0 + k, tpot_p90_ms=20.0, ttft_p95_ms=110.0, tpot_p95_ms=21.0,
                            arrival_rate=2.0, num_waiting_prefill=k, violations={}, action="keep")
                for k in range(4)]
    return SimResult(policy=policy, requests=requests, timeline=timeline, num_reallocations=1,
                     controller_status=None, sim_duration_s=float(len(ttfts)), wall_time_s=0.1)


def test_parse_length():
    assert repr(parse_length("128", "--x")) == repr(LengthDist.fixed(128))
    assert repr(parse_length("10:20", "--x")) == repr(LengthDist.uniform(10, 20))
    assert parse_length("lognormal:300:200", "--x").kind == "lognormal"
    for bad in ("abc", "0", "20:10", "lognormal:1", "gamma:1:2"):
        with pytest.raises(ValueError, match="--x"):
            parse_length(bad, "--x")


def test_simulate_arguments():
    args = _parse("--policy", "unified", "--policy", "static:70/30", "--slo-ttft-ms", "300", "--seed", "3")
    assert args.policies == ["unified", "static:70/30"]
    assert args.slo_ttft_ms == 300.0 and args.seed == 3
    defaults = _parse()
    assert defaults.policies is None and defaults.trace is None and not defaults.phased
    assert set(DEFAULT_POLICIES) == {"unified", "static:30/70", "static:50/50", "static:70/30", "slo:paper",
                                     "slo:heuristic"}


def test_build_workloads(azure_trace):
    workload, info = build_workload(_parse("--trace", str(azure_trace), "--max-requests", "50", "--time-scale", "0.5"))
    assert len(workload) == 50 and info["source"] == "trace" and info["num_requests"] == 50
    workload, info = build_workload(_parse("--phased", "--duration", "20"))
    assert info["source"] == "phased" and max(r.arrival_time for r in workload) < 20
    workload, info = build_workload(_parse("--request-rate", "5", "--duration", "10", "--input-len", "64",
                                           "--output-len", "8:16"))
    assert info["source"] == "synthetic" and all(r.input_len == 64 and 8 <= r.output_len <= 16 for r in workload)
    with pytest.raises(ValueError, match="--trace"):
        build_workload(_parse("--trace", str(azure_trace), "--phased"))


def _write_trace(path: Path, start_s: int, count: int, gap_s: float, context: int, generated: int) -> Path:
    rows = [f"2023-11-16 18:{(start_s + int(i * gap_s)) // 60:02d}:{(start_s + int(i * gap_s)) % 60:02d}.0000000,"
            f"{context},{generated}" for i in range(count)]
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    return path


def test_phase_traces_run_one_after_the_other(tmp_path):
    """--phase-trace A --phase-trace B --phase-seconds S: A's first S seconds, then B's, each scaled and
    offset like --trace; exclusive with --trace and --phased."""
    long_prompts = _write_trace(tmp_path / "a.csv", 0, 40, 1.0, 3000, 20)
    long_answers = _write_trace(tmp_path / "b.csv", 0, 40, 1.0, 200, 600)
    workload, info = build_workload(_parse("--phase-trace", str(long_prompts), "--phase-trace", str(long_answers),
                                           "--phase-seconds", "10", "--time-scale", "0.5"))
    assert info["source"] == "phase-traces" and info["phase_seconds"] == 10.0
    first = [r for r in workload if r.arrival_time < 10]
    second = [r for r in workload if r.arrival_time >= 10]
    assert len(first) == len(second) == 20  # 40 rows 1 s apart at half time: 20 per 10 s
    assert {r.input_len for r in first} == {3000} and {r.input_len for r in second} == {200}
    assert max(r.arrival_time for r in second) < 20
    with pytest.raises(ValueError, match="--phase-trace"):
        build_workload(_parse("--phase-trace", str(long_prompts), "--phased"))
    assert main(["simulate", "--phase-trace", str(long_prompts), "--phase-trace", str(long_answers),
                 "--phase-seconds", "10", "--policy", "unified", "--output-json", str(tmp_path / "o.json")]) == 0
    doc = json.loads((tmp_path / "o.json").read_text())
    assert doc["workload"]["phases"] == [str(long_prompts), str(long_answers)]


def test_simulate_reads_a_profile_as_its_perf_model(tmp_path, capsys):
    """--perf-model FILE reads the format `semipd profile` writes (and the profile predictor reads)."""
    from semipd.perf import get_perf_model, profile_from_model, save_profile

    model = get_perf_model("llama-3.1-8b-h100")
    profile = profile_from_model(
        model, name="measured-h100", sms=[16, 64, 132], tokens=[64, 512, 2048], batch=[1, 16, 64],
        kv_tokens=[0, 65_536], splits=[(16, 116), (64, 68)],
        memory={"memory_bytes": 80 * 2**30, "weight_bytes": 16 * 10**9, "activation_reserve_bytes": 3 * 2**30,
                "kv_bytes_per_token": 131072})
    path = tmp_path / "profile.json"
    save_profile(profile, path)
    out = tmp_path / "r.json"
    assert main(["simulate", "--perf-model", str(path), "--request-rate", "4", "--duration", "6", "--input-len",
                 "256", "--output-len", "16", "--policy", "static:50/50", "--policy", "slo:profile",
                 "--output-json", str(out)]) == 0
    assert "perf model" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["config"]["perf_model"] == str(path)
    assert all(s["num_finished"] == doc["workload"]["num_requests"] for s in doc["policies"].values())


def test_policy_table_lists_policies():
    results = {"static:70/30": _fake_result("static:70/30", [50.0, 300.0]), "slo:paper": _fake_result("x", [50.0])}
    summaries = {name: r.summary(SLO) for name, r in results.items()}
    console = Console(record=True, width=200)
    console.print(policy_table(summaries, SLO, title="t"))
    text = console.export_text()
    assert "static:70/30" in text and "slo:paper" in text
    assert "50.0%" in text and "100.0%" in text


def test_attainment_between():
    result = _fake_result("p", [50.0, 300.0, 60.0, 70.0])
    assert attainment_between(result, SLO, 0.0, 2.0) == (0.5, 2)
    assert attainment_between(result, SLO, 2.0, 10.0) == (1.0, 2)
    assert attainment_between(result, SLO, 100.0, 200.0) == (0.0, 0)


def test_plot_written(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot_timelines([_fake_result("a", [10.0]), _fake_result("b", [20.0], split=50.0)], SLO,
                          tmp_path / "t.png", title="fake")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(PlotUnavailableError, match=r"\.\[plot\]"):
        plot_timelines([_fake_result("a", [10.0])], SLO, tmp_path / "t.png")


def test_simulate_bad_arguments(capsys):
    assert main(["simulate", "--policy", "static:banana"]) == 2
    assert "static" in capsys.readouterr().err
    assert main(["simulate", "--perf-model", "nope"]) == 2
    assert "llama-3.1-8b-h100" in capsys.readouterr().err


def test_simulate_end_to_end(tmp_path, capsys):
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    argv = ["simulate", "--request-rate", "4", "--duration", "8", "--input-len", "256", "--output-len", "32",
            "--policy", "unified", "--policy", "static:50/50", "--policy", "slo:heuristic",
            "--monitoring-interval", "2", "--output-json", str(out_json)]
    has_mpl = _has_matplotlib()
    if has_mpl:
        argv += ["--plot", str(out_png)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "unified" in text and "slo:heuristic" in text
    doc = json.loads(out_json.read_text())
    assert set(doc) >= {"workload", "slo", "policies"}
    assert doc["slo"]["ttft_target_ms"] == 200.0
    assert doc["workload"]["num_requests"] > 10
    assert list(doc["policies"]) == ["unified", "static:50/50", "slo:heuristic"]
    for summary in doc["policies"].values():
        assert SUMMARY_KEYS <= set(summary)
        assert 0.0 <= summary["slo_attainment"] <= 1.0
        assert summary["num_finished"] == doc["workload"]["num_requests"]
    if has_mpl:
        assert out_png.stat().st_size > 0


def test_simulate_plot_without_matplotlib(tmp_path, monkeypatch, capsys):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    argv = ["simulate", "--duration", "3", "--policy", "unified", "--plot", str(tmp_path / "p.png")]
    assert main(argv) == 1
    assert ".[plot]" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()


def test_demo_unknown_model(capsys):
    assert main(["demo", "--model-path", "acme/Unknown-70B"]) == 2
    err = capsys.readouterr().err
    assert "acme/Unknown-70B" in err and "llama-3.1-8b-h100" in err


def test_demo_bad_arguments(capsys):
    assert main(["demo", "--initial-prefill-sm", "70", "--initial-decode-sm", "40"]) == 2
    assert "add up to 100" in capsys.readouterr().err
    assert main(["demo", "--predictor", "crystal-ball"]) == 2
    assert "crystal-ball" in capsys.readouterr().err


def test_demo_few_cycles(tmp_path, capsys):
    plot = tmp_path / "demo.png"
    assert main(["demo", "--simulation-cycles", "4", "--monitoring-interval", "2", "--request-rate", "4",
                 "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert "controller statistics" in text and "effect" in text
    assert "total_adjustments" in text
    if _has_matplotlib():
        assert plot.exists()
    else:
        assert "plot skipped" in text


def test_example_script_without_matplotlib(tmp_path):
    """The example runs with the base install: matplotlib hidden, it skips the plot and exits 0."""
    code = ("import sys, runpy; sys.modules['matplotlib'] = None; "
            f"sys.argv = ['x', '--simulation-cycles', '3', '--monitoring-interval', '2', '--request-rate', '3', "
            f"'--plot', {str(tmp_path / 'p.png')!r}]; "
            f"runpy.run_path({str(REPO / 'examples/semi_pd/slo_aware_example.py')!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "plot skipped" in proc.stdout and ".[plot]" in proc.stdout
    assert not (tmp_path / "p.png").exists()


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_demo_defaults_tell_the_story():
    """With the demo's defaults the static start misses TPOT, the controller moves SMs to decode,
    and the requests after its last move meet the SLOs far more often than under the static start."""
    from semipd.sim.demo import add_arguments, demo_workload
    from semipd.sim.runner import SimConfig, run_policy

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    slo = SLOConstraints(ttft_target_ms=args.ttft_target, tpot_target_ms=args.tpot_target)
    config = SimConfig(perf_model=args.model_path, slo=slo, monitoring_interval=args.monitoring_interval,
                       initial_prefill_percentage=args.initial_prefill_sm, seed=args.seed,
                       decode_borrows_idle_prefill=False)  # as the demo runs it: the seed's MPS partitions
    workload = demo_workload(args.simulation_cycles * args.monitoring_interval, args.request_rate, args.seed)
    adaptive = run_policy(workload, f"slo:{args.predictor}", config)
    static = run_policy(workload, "static:70/30", config)
    moves = [c for c in adaptive.timeline if "->" in c.action]
    assert moves and all(c.prefill_percentage < 70 for c in moves)
    assert any("tpot" in c.violations for c in static.timeline)
    after = moves[-1].time
    ours, count = attainment_between(adaptive, slo, after, float("inf"))
    theirs, _ = attainment_between(static, slo, after, float("inf"))
    assert count > 100 and ours >= 0.9 and ours > theirs + 0.5


def _flat(text: str) -> str:
    """Console output with rich's line wrapping undone."""
    return " ".join(text.split())


def test_simulate_trace_errors_read_cleanly(tmp_path, capsys):
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,374,44\n2023-11-16 18:15:47,17\n")
    assert main(["simulate", "--trace", str(ragged), "--policy", "unified"]) == 2
    err = _flat(capsys.readouterr().err)
    assert err.startswith(f"error: trace {ragged}, line 3: expected 3 fields") and "Traceback" not in err
    assert main(["simulate", "--trace", str(tmp_path / "missing.csv"), "--policy", "unified"]) == 2
    assert _flat(capsys.readouterr().err).startswith("error: trace file not found: ")


@pytest.mark.parametrize("flag", ["--output-json", "--plot"])
def test_output_paths_are_checked_before_simulating(flag, tmp_path, monkeypatch, capsys):
    import semipd.sim.runner

    def no_simulation(*args, **kwargs):
        raise AssertionError("simulated before checking the output paths")

    monkeypatch.setattr(semipd.sim.runner, "run_policy", no_simulation)
    missing = tmp_path / "no" / "such" / "r.out"
    assert main(["simulate", "--duration", "3", "--policy", "unified", flag, str(missing)]) == 2
    err = _flat(capsys.readouterr().err)
    assert f"error: {flag} {missing}: the directory {missing.parent} does not exist" in err
    assert main(["simulate", "--duration", "3", "--policy", "unified", flag, str(tmp_path)]) == 2
    assert f"{flag} {tmp_path} is a directory" in _flat(capsys.readouterr().err)
    assert main(["demo", "--plot", str(missing)]) == 2
    assert f"error: --plot {missing}: the directory" in _flat(capsys.readouterr().err)


def test_simulate_write_failure_is_one_error_line(tmp_path, monkeypatch, capsys):
    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_text", refuse)
    out = tmp_path / "r.json"
    assert main(["simulate", "--duration", "3", "--policy", "unified", "--output-json", str(out)]) == 1
    err = _flat(capsys.readouterr().err)
    assert f"error: --output-json: cannot write {out}: Permission denied" in err and "Traceback" not in err


def test_plot_marks_latencies_above_the_axis(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figures.append(self))
    spiky = _fake_result("spiky", [10.0])
    spiky = replace(spiky, timeline=[replace(c, ttft_p90_ms=5000.0 * (k % 2) + 50.0)
                                     for k, c in enumerate(spiky.timeline)])
    plot_timelines([spiky, _fake_result("calm", [10.0])], SLO, tmp_path / "t.png")
    ttft, tpot = (ax for ax in figures[0].axes if ax.get_ylabel().startswith(("TTFT", "TPOT")))
    assert ttft.get_ylim()[1] == pytest.approx(6 * SLO.ttft_target_ms)
    notes = [t.get_text() for t in ttft.texts]
    assert notes == ["\u25b2 above 1200 ms, off the scale (2 points)"]
    markers = [line for line in ttft.get_lines() if line.get_marker() == "^"]
    assert len(markers) == 1 and list(markers[0].get_xdata()) == [5.0, 15.0]
    assert not tpot.texts and not [line for line in tpot.get_lines() if line.get_marker() == "^"]


def test_demo_names_the_grid_and_keeps_the_statistics_title_whole(capsys):
    assert main(["demo", "--simulation-cycles", "1", "--monitoring-interval", "2", "--request-rate", "2",
                 "--plot", ""]) == 0
    out = capsys.readouterr().out
    assert "start at 70/30" in out and "the split snaps to the 8-SM grid of the H100: 73/27 = 96/36 SMs" in out
    assert "controller statistics (get_controller_status()['statistics'])" in out


def test_top_level_help_and_version(capsys):
    from semipd import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"semipd {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "steered by an SLO-aware controller; a simulated GPU runs the same scheduler and controller without one." \
        in text
