"""Loading: single-file and sharded safetensors, dtypes, dummy weights, configs, presets, and
the error for each way a checkpoint can be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_model_helpers import hf_model, save_hf

from semipd.engine.models.config import KNOWN_ARCHITECTURES, ModelConfig
from semipd.engine.models.loader import load_model, resolve_dtype
from semipd.engine.models.presets import get_preset, preset_names


@pytest.fixture(scope="module")
def qwen2_hf():
    return hf_model("qwen2")


@pytest.fixture
def qwen2_dir(qwen2_hf, tmp_path: Path) -> Path:
    return save_hf(qwen2_hf, tmp_path / "m")


def _check_equal_to_hf(ours, hf) -> None:
    sd = hf.state_dict()
    layer = ours.model.layers[1]
    q, k, v = layer.self_attn.qkv_proj.weight.split([ours.config.q_size, ours.config.kv_size, ours.config.kv_size])
    assert torch.equal(q, sd["model.layers.1.self_attn.q_proj.weight"])
    assert torch.equal(v, sd["model.layers.1.self_attn.v_proj.weight"])
    assert torch.equal(layer.self_attn.qkv_proj.bias[ours.config.q_size:][:ours.config.kv_size],
                       sd["model.layers.1.self_attn.k_proj.bias"])
    gate, up = layer.mlp.gate_up_proj.weight.chunk(2)
    assert torch.equal(gate, sd["model.layers.1.mlp.gate_proj.weight"])
    assert torch.equal(up, sd["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(ours.model.norm.weight, sd["model.norm.weight"])
    assert torch.equal(ours.lm_head.weight, sd["lm_head.weight"])


def test_single_file_and_sharded_load_the_same_weights(qwen2_hf, tmp_path: Path) -> None:
    single = save_hf(qwen2_hf, tmp_path / "single")
    sharded = save_hf(qwen2_hf, tmp_path / "sharded", max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 2
    _check_equal_to_hf(load_model(single), qwen2_hf)
    _check_equal_to_hf(load_model(sharded), qwen2_hf)


def test_dtypes(qwen2_dir: Path) -> None:
    assert load_model(qwen2_dir, dtype="bfloat16").dtype == torch.bfloat16
    assert load_model(qwen2_dir, dtype="fp16").dtype == torch.float16
    assert load_model(qwen2_dir).dtype == torch.float32  # auto on CPU
    cfg = ModelConfig.from_dict(get_preset("llama-3.1-8b"))
    assert resolve_dtype("auto", cfg, torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        load_model(qwen2_dir, dtype="int8")


def test_missing_files(qwen2_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)  # a directory without config.json
    (qwen2_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(qwen2_dir)


def test_missing_shard_is_named(qwen2_hf, tmp_path: Path) -> None:
    d = save_hf(qwen2_hf, tmp_path / "s", max_shard_size="40KB")
    victim = sorted(d.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        load_model(d)


def test_unknown_architecture_lists_known(qwen2_dir: Path) -> None:
    cfg = json.loads((qwen2_dir / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (qwen2_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="GPT2LMHeadModel") as e:
        load_model(qwen2_dir)
    assert all(a in str(e.value) for a in KNOWN_ARCHITECTURES)


def _rewrite(d: Path, edit) -> None:
    tensors = load_file(str(d / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})


def test_shape_mismatch_names_tensor_and_shapes(qwen2_dir: Path) -> None:
    name = "model.layers.0.mlp.up_proj.weight"
    _rewrite(qwen2_dir, lambda t: t.__setitem__(name, torch.zeros(100, 64)))
    with pytest.raises(ValueError, match=r"up_proj.weight.*\(100, 64\).*\(128, 64\)"):
        load_model(qwen2_dir)


def test_missing_and_unexpected_tensors(qwen2_dir: Path) -> None:
    _rewrite(qwen2_dir, lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"))
    with pytest.raises(ValueError, match="lacks 1 tensors.*layers.1.self_attn.k_proj.bias"):
        load_model(qwen2_dir)
    _rewrite(qwen2_dir, lambda t: t.update({"model.layers.1.self_attn.k_proj.bias": torch.zeros(32),
                                            "model.extra.weight": torch.zeros(3)}))
    with pytest.raises(ValueError, match="model does not.*model.extra.weight"):
        load_model(qwen2_dir)


def test_dummy_weights_from_preset_and_directory(qwen2_dir: Path) -> None:
    a = load_model("tiny-llama", load_format="dummy", seed=3)
    b = load_model("tiny-llama", load_format="dummy", seed=3)
    assert torch.equal(a.model.layers[0].mlp.down_proj.weight, b.model.layers[0].mlp.down_proj.weight)
    assert torch.all(a.model.norm.weight == 1)
    d = load_model(qwen2_dir, load_format="dummy")
    assert d.config.qkv_bias and torch.isfinite(d.model.layers[0].self_attn.qkv_proj.bias).all()


def test_load_format_errors(qwen2_dir: Path) -> None:
    with pytest.raises(ValueError, match="load_format='dummy'"):
        load_model("tiny-llama")
    with pytest.raises(ValueError, match="load_format"):
        load_model(qwen2_dir, load_format="pt")
    with pytest.raises(ValueError, match="neither a directory nor a preset"):
        load_model("no-such-model")


@pytest.mark.parametrize(("name", "billions"), [("llama-3.1-8b", 8.03), ("llama-3.2-1b", 1.24), ("qwen2.5-7b", 7.62),
                                                ("qwen3-8b", 8.19), ("mistral-7b-v0.3", 7.25)])
def test_presets_match_published_sizes(name: str, billions: float) -> None:
    cfg = ModelConfig.from_dict(get_preset(name))
    assert cfg.num_params() / 1e9 == pytest.approx(billions, abs=0.01)


def test_every_preset_parses() -> None:
    for name in preset_names():
        ModelConfig.from_dict(get_preset(name))
    with pytest.raises(ValueError, match="tiny-llama"):
        get_preset("nope")


def test_config_layouts_and_rules() -> None:
    base = get_preset("tiny-llama")
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    v4 = ModelConfig.from_dict({**base, "rope_theta": 500.0, "rope_scaling": {"type": "llama3", **scaling}})
    v5 = ModelConfig.from_dict({**{k: v for k, v in base.items() if k != "rope_theta"},
                                "rope_parameters": {"rope_type": "llama3", "rope_theta": 500.0, **scaling}})
    assert v4 == v5 and v4.rope_theta == 500.0 and v4.rope_scaling["rope_type"] == "llama3"
    no_head_dim = {k: v for k, v in base.items() if k != "head_dim"}
    assert ModelConfig.from_dict(no_head_dim).head_dim == 64 // 4
    with pytest.raises(ValueError, match="rope_scaling type 'yarn'"):
        ModelConfig.from_dict({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    mistral = get_preset("mistral-7b-v0.3")
    with pytest.raises(ValueError, match="sliding_window=4096"):
        ModelConfig.from_dict({**mistral, "sliding_window": 4096})
    qwen = {**get_preset("qwen2.5-7b"), "sliding_window": 4096}
    ModelConfig.from_dict(qwen)  # not used unless use_sliding_window
    with pytest.raises(ValueError, match="sliding_window"):
        ModelConfig.from_dict({**qwen, "use_sliding_window": True})
    with pytest.raises(ValueError, match="num_key_value_heads"):
        ModelConfig.from_dict({**base, "num_key_value_heads": 3})
    with pytest.raises(ValueError, match="hidden_act"):
        ModelConfig.from_dict({**base, "hidden_act": "gelu"})
