"""The performance models: calibration, monotonicity, interference, memory, profiles."""

from __future__ import annotations

import json

import pytest

from semipd.perf import (
    AnalyticalPerfModel,
    ProfilePerfModel,
    builtin_for,
    get_perf_model,
    known_perf_models,
    load_profile,
)
from semipd.perf.profile import profile_from_model, save_profile

SMS = [8, 16, 24, 32, 48, 64, 80, 96, 112, 124, 132]


@pytest.fixture(scope="module")
def model() -> AnalyticalPerfModel:
    m = get_perf_model("llama-3.1-8b-h100")
    assert isinstance(m, AnalyticalPerfModel)
    return m


@pytest.mark.parametrize(("sms", "ms"), [(132, 44.6), (96, 60.3), (64, 73.8), (32, 132.0)])
def test_prefill_linear_calibration(model, sms, ms):
    assert model.linear_time(2048, sms) * 1e3 == pytest.approx(ms, rel=0.10)


@pytest.mark.parametrize(("sms", "ms"), [(132, 5.38), (64, 5.78), (48, 6.54), (32, 7.67), (16, 12.6)])
def test_decode_linear_calibration(model, sms, ms):
    assert model.linear_time(64, sms) * 1e3 == pytest.approx(ms, rel=0.10)


def test_full_gpu_rates(model):
    flops = 2 * model.model.linear_params * 8192
    assert 600e12 < flops / model.linear_time(8192, 132) < 800e12
    assert 5.5e-3 < model.decode_time(1, 512, 132) < 6.5e-3  # a good engine's batch-1 step


def test_more_sms_never_slower(model):
    for chunks in ([(16, 16)], [(2048, 2048)], [(512, 4096), (300, 300)]):
        times = [model.prefill_time(chunks, s) for s in SMS]
        assert all(b <= a for a, b in zip(times, times[1:], strict=False)), chunks
    for batch, kv in ((1, 100), (64, 80_000), (256, 400_000)):
        times = [model.decode_time(batch, kv, s) for s in SMS]
        assert all(b <= a for a, b in zip(times, times[1:], strict=False)), (batch, kv)


def test_more_work_never_faster(model):
    for s in (16, 64, 132):
        prefill = [model.prefill_time([(t, t)], s) for t in (1, 16, 128, 1024, 4096, 8192)]
        assert all(b >= a for a, b in zip(prefill, prefill[1:], strict=False))
        context = [model.prefill_time([(256, c)], s) for c in (256, 1024, 8192)]
        assert all(b >= a for a, b in zip(context, context[1:], strict=False))
        batch = [model.decode_time(b, 1000 * b, s) for b in (1, 8, 64, 256, 512)]
        assert all(b >= a for a, b in zip(batch, batch[1:], strict=False))
        kv = [model.decode_time(64, k, s) for k in (0, 10_000, 100_000, 500_000)]
        assert all(b >= a for a, b in zip(kv, kv[1:], strict=False))


def test_interference_range(model):
    assert model.interference(16, 116)[1] == pytest.approx(1.10, abs=0.01)
    assert model.interference(96, 36)[1] == pytest.approx(1.34, abs=0.01)
    for p in range(8, 132, 8):
        pre, dec = model.interference(p, 132 - p)
        assert 1.0 <= pre <= 1.12
        assert 1.09 <= dec <= 1.34


def test_side_by_side_matches_measurement(model):
    """P64/D68 together: prefill 2048 took 81.8 ms and a batch-64 decode step 7.25 ms."""
    pre, dec = model.interference(64, 68)
    assert model.linear_time(2048, 64) * pre * 1e3 == pytest.approx(81.8, rel=0.10)
    assert model.linear_time(64, 68) * dec * 1e3 == pytest.approx(7.25, rel=0.10)


def test_mixed_batch(model):
    chunks = [(1024, 1024), (512, 3000)]
    assert model.mixed_time(chunks, 0, 0) == pytest.approx(model.prefill_time(chunks, 132))
    assert model.mixed_time([], 32, 40_000) == pytest.approx(model.decode_time(32, 40_000, 132))
    mixed = model.mixed_time(chunks, 32, 40_000)
    # One pass over the weights serves both parts: cheaper than running them one after the other.
    alone = model.prefill_time(chunks, 132)
    assert alone < mixed < alone + model.decode_time(32, 40_000, 132)
    assert model.mixed_time([], 0, 0) == 0.0


def test_empty_work_and_argument_errors(model):
    assert model.prefill_time([], 64) == 0.0
    assert model.decode_time(0, 0, 64) == 0.0
    with pytest.raises(ValueError, match="sms"):
        model.decode_time(1, 1, 0)
    with pytest.raises(ValueError, match="sms"):
        model.prefill_time([(1, 1)], 133)
    with pytest.raises(ValueError, match="chunks"):
        model.prefill_time([(10, 5)], 64)
    with pytest.raises(ValueError, match="batch_size"):
        model.decode_time(-1, 0, 64)


def test_kv_capacity(model):
    tokens = model.kv_capacity_tokens(0.9)
    assert 400_000 < tokens < 480_000  # vLLM found room for 462,944 tokens on this GPU and model
    assert model.kv_capacity_tokens(0.5) < tokens
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="gpu_memory_utilization"):
            model.kv_capacity_tokens(bad)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        model.kv_capacity_tokens(0.2)  # less than the weights


def test_model_spec_sizes(model):
    assert model.model.kv_bytes_per_token == 128 * 1024
    assert model.model.weight_bytes / 1e9 == pytest.approx(16.06, abs=0.01)
    assert model.model.linear_params * 2 == 13958643712  # the measured layers' bytes


@pytest.mark.parametrize(
    "name", ["llama-3.1-8b-h100", "llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct", "/models/Llama-3.1-8B/"]
)
def test_name_lookup(name):
    assert get_perf_model(name).name == "llama-3.1-8b-h100"


def test_unknown_name_lists_known():
    assert known_perf_models() == ["llama-3.1-8b-h100", "llama-3.1-8b-h100-measured"]
    with pytest.raises(ValueError, match="llama-3.1-8b-h100"):
        get_perf_model("gpt-2-on-a-toaster")


def _profile(model: AnalyticalPerfModel) -> dict:
    memory = {
        "memory_bytes": model.gpu.memory_bytes,
        "weight_bytes": model.model.weight_bytes,
        "activation_reserve_bytes": model.gpu.activation_reserve_bytes,
        "kv_bytes_per_token": model.model.kv_bytes_per_token,
    }
    return profile_from_model(
        model, name="synthetic", sms=[8, 16, 32, 48, 64, 96, 132], tokens=[16, 128, 512, 2048, 8192],
        batch=[1, 8, 32, 64, 128, 256], kv_tokens=[0, 32_768, 131_072, 524_288],
        splits=[(16, 116), (32, 100), (64, 68), (96, 36), (112, 20)], memory=memory, meta={"source": "analytical"},
    )


def test_profile_round_trip(model, tmp_path):
    path = tmp_path / "profile.json"
    save_profile(_profile(model), path)
    loaded = load_profile(path)
    assert isinstance(loaded, ProfilePerfModel)
    assert get_perf_model(str(path)).name == "synthetic"
    assert loaded.total_sms == 132
    # On the grid: exact.
    assert loaded.prefill_time([(2048, 2048)], 64) == pytest.approx(model.prefill_time([(2048, 2048)], 64))
    assert loaded.decode_time(64, 131_072, 32) == pytest.approx(model.decode_time(64, 131_072, 32))
    assert loaded.interference(64, 68) == pytest.approx(model.interference(64, 68))
    assert loaded.kv_capacity_tokens(0.9) == model.kv_capacity_tokens(0.9)
    # Between grid points, batches of chunks and mixed batches: close.
    cases = [([(1000, 1000)], 80), ([(300, 300)] * 3, 40), ([(256, 6000)], 132), ([(700, 2000), (50, 50)], 24)]
    for chunks, sms in cases:
        assert loaded.prefill_time(chunks, sms) == pytest.approx(model.prefill_time(chunks, sms), rel=0.10), chunks
    for batch, kv, sms in [(20, 50_000, 56), (100, 200_000, 100), (3, 1000, 12)]:
        assert loaded.decode_time(batch, kv, sms) == pytest.approx(model.decode_time(batch, kv, sms), rel=0.10)
    assert loaded.mixed_time([(1024, 1024)], 64, 80_000) == pytest.approx(
        model.mixed_time([(1024, 1024)], 64, 80_000), rel=0.10)
    assert loaded.mixed_time([], 64, 80_000) == pytest.approx(loaded.decode_time(64, 80_000, 132))


def test_profile_validation(model, tmp_path):
    good = _profile(model)
    bad_format = {**good, "format": "other/9"}
    with pytest.raises(ValueError, match="format"):
        ProfilePerfModel(bad_format)
    bad_shape = json.loads(json.dumps(good))
    bad_shape["decode"]["time_ms"] = bad_shape["decode"]["time_ms"][:-1]
    with pytest.raises(ValueError, match="decode.time_ms"):
        ProfilePerfModel(bad_shape)
    bad_axis = json.loads(json.dumps(good))
    bad_axis["prefill"]["tokens"] = [16, 16, 512, 2048, 8192]
    with pytest.raises(ValueError, match="prefill.tokens"):
        ProfilePerfModel(bad_axis)
    bad_slow = json.loads(json.dumps(good))
    bad_slow["interference"]["decode_slowdown"][0] = 0.5
    with pytest.raises(ValueError, match="decode_slowdown"):
        ProfilePerfModel(bad_slow)
    missing = {k: v for k, v in good.items() if k != "decode"}
    with pytest.raises(ValueError, match="decode"):
        ProfilePerfModel(missing)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="path"):
        load_profile(tmp_path / "junk.json")


def test_profile_host_overhead_is_optional_and_adds_to_every_step(model):
    profile = _profile(model)
    assert profile["host_overhead_ms"] == pytest.approx({"prefill": 0.5, "decode": 0.4})  # the roofline's overheads
    without = {k: v for k, v in profile.items() if k != "host_overhead_ms"}
    bare, full = ProfilePerfModel(without), ProfilePerfModel(profile)
    assert bare.host_overhead_s("decode") == 0.0 and full.host_overhead_s("prefill") == pytest.approx(0.5e-3)
    assert full.decode_time(64, 131_072, 32) - bare.decode_time(64, 131_072, 32) == pytest.approx(0.4e-3)
    assert full.prefill_time([(2048, 2048)], 64) - bare.prefill_time([(2048, 2048)], 64) == pytest.approx(0.5e-3)
    for bad in ({"prefill": -1.0}, {"sampling": 1.0}, {"decode": "fast"}, [0.5]):
        with pytest.raises(ValueError, match="host_overhead_ms"):
            ProfilePerfModel({**profile, "host_overhead_ms": bad})
    with pytest.raises(ValueError, match="phase"):
        full.host_overhead_s("mixed")


def test_builtin_for_matches_the_gpu_and_the_model():
    assert builtin_for("NVIDIA H100 80GB HBM3", 132, "/models/Llama-3.1-8B-Instruct") == "llama-3.1-8b-h100-measured"
    assert builtin_for("NVIDIA H100 80GB HBM3", 132, "llama-3.1-8b") == "llama-3.1-8b-h100-measured"
    assert builtin_for("NVIDIA H100 PCIe", 114, "llama-3.1-8b") is None  # another H100: other SMs, other speeds
    assert builtin_for("NVIDIA A100-SXM4-80GB", 108, "llama-3.1-8b") is None
    assert builtin_for("NVIDIA H100 80GB HBM3", 132, "qwen3-8b") is None


def test_the_shipped_measured_profile_loads_and_predicts_like_its_tables():
    """The H100 + Llama-3.1-8B profile measured by `semipd profile` ships with the package: the
    predictor an H100 engine gets without --profile."""
    m = get_perf_model("llama-3.1-8b-h100-measured")
    assert m.name.startswith("llama-3.1-8b")
    assert m.total_sms == 132
    whole = m.prefill_time([(2048, 2048)], 132)
    assert 0.03 < whole < 0.08  # measured 51 ms on the whole H100
    assert m.prefill_time([(2048, 2048)], 64) > whole
    assert m.decode_time(64, 64 * 1024, 68) > m.decode_time(64, 64 * 1024, 132)
