"""benchmarks/bench_engine.py on CPU with the tiny preset: options, roofline arithmetic, and a
small end-to-end run that records a failing measurement without losing the others."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from semipd.engine.models.config import ModelConfig
from semipd.engine.models.presets import get_preset

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_engine.py"
_spec = importlib.util.spec_from_file_location("bench_engine", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

TINY = ModelConfig.from_dict(get_preset("tiny-llama"))


def test_parse_args_defaults_and_quick() -> None:
    args = bench.parse_args([])
    assert (args.model, args.device, args.dtype, args.num_seqs, args.iters) == ("llama-3.1-8b", "cuda", "bfloat16",
                                                                              256, 20)
    assert tuple(args.len_range) == (100, 1024) and args.output.name == "engine_h100.json"
    quick = bench.parse_args(["--quick", "--device", "cpu", "--model", "tiny-llama"])
    assert (quick.num_seqs, quick.iters, quick.device, quick.model) == (64, 5, "cpu", "tiny-llama")
    with pytest.raises(SystemExit):
        bench.parse_args(["--len-range", "9", "3"])


def test_floor_arithmetic_tiny() -> None:
    # 2 layers x (qkv 8192 + o 4096 + mlp 24576 + norms 128) + embed and head 2 x 32768 + final norm 64
    assert TINY.num_params() == 139584
    assert bench.decode_weight_bytes(TINY, torch.float32) == (139584 - 32768) * 4
    assert bench.kv_bytes(TINY, torch.float32, 512) == 2 * 2 * 2 * 16 * 512 * 4
    linear = 2 * 73984 * 8192
    head = 2 * 32768 * 4
    attention = 4 * 4 * 16 * (4 * 2048 * 2049 // 2) * 2
    assert bench.prefill_flops(TINY, [2048] * 4) == linear + head + attention
    floors = bench.roofline_floors(TINY, torch.float32, 1e9, 1e12, 512, 1024, [2048] * 4)
    assert floors["decode_b1"] == pytest.approx((427264 + 262144) / 1e9 * 1e3)
    assert floors["decode_b64"] == pytest.approx((427264 + 64 * 1024 * 512) / 1e9 * 1e3)
    assert floors["prefill_4x2048"] == pytest.approx((linear + head + attention) / 1e12 * 1e3)
    assert bench.roofline_floors(TINY, torch.float32, None, None, 1, 1, [1])["decode_b1"] is None


def test_floor_of_llama_8b_decode() -> None:
    cfg = ModelConfig.from_dict(get_preset("llama-3.1-8b"))
    weights = bench.decode_weight_bytes(cfg, torch.bfloat16)
    assert weights / 1e9 == pytest.approx(15.01, abs=0.01)  # linear layers 13.96 GB + LM head 1.05 GB
    floor = bench.roofline_floors(cfg, torch.bfloat16, 2.97e12, 8e14, 512, 1024, [2048] * 4)
    assert 5.0 < floor["decode_b1"] < 5.2


def test_small_run_on_cpu_survives_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("no such kernel")

    monkeypatch.setattr(bench, "gemm_rate", broken)
    out = tmp_path / "engine.json"
    rc = bench.main(["--device", "cpu", "--model", "tiny-llama", "--dtype", "float32", "--quick", "--iters", "1",
                     "--copy-mib", "1", "--prefill-len", "16", "--num-seqs", "3", "--len-range", "3", "6",
                     "--check-prompts", "2", "--output", str(out)])
    assert rc == 1
    report = json.loads(out.read_text())
    assert report["errors"] == {"gemm_flops_per_s": "RuntimeError: no such kernel"}
    r = report["results"]
    assert r["decode_b1"]["step_ms"] > 0 and r["decode_b1"]["x_floor"] > 0
    assert "floor_ms" not in r["prefill_4x2048"]  # no GEMM rate, no prefill floor
    assert r["offline"]["num_seqs"] == 3 and r["offline"]["output_tokens_per_s"] > 0
    assert r["cuda_graphs_vs_eager"]["equal"]
    assert report["torch"] == torch.__version__ and report["date"]
