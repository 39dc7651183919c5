"""Build a model and fill its weights: from a local Hugging Face directory (safetensors,
single file or sharded) or with random ("dummy") weights for performance work.

Weights are read straight onto the target device (``safe_open(..., device=...)``) and
copied into the model's parameters, converting the dtype on the way; checkpoint q/k/v and
gate/up tensors go into row slices of the fused parameters. Every mismatch is an error
that names the tensor: a wrong shape, a tensor the model lacks, a tensor the checkpoint
lacks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from semipd.engine.models.config import ModelConfig, resolve_model_config
from semipd.engine.models.llama import LlamaForCausalLM
from semipd.engine.models.registry import model_class
from semipd.engine.runtime.attention.registry import get_backend

LOAD_FORMATS = ("auto", "safetensors", "dummy")
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
# Checkpoint tensors the model does not need (RoPE tables are recomputed).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
DUMMY_STD = 0.02
"""Standard deviation of dummy weights: activations and logits stay O(1) through deep models."""


def resolve_dtype(dtype: str | torch.dtype, config: ModelConfig, device: torch.device) -> torch.dtype:
    """The dtype to run in. ``"auto"``: the checkpoint's half dtype on CUDA (bfloat16 for a
    float32 or unspecified checkpoint); float32 on CPU, whose kernels are the references."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype must be one of float32, float16, bfloat16, got {dtype}")
        return dtype
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return _DTYPES[config.torch_dtype] if config.torch_dtype in ("float16", "bfloat16") else torch.bfloat16
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def default_attention_backend(device: torch.device) -> str:
    return "triton" if device.type == "cuda" else "torch"


def load_model(model: str | Path, load_format: str = "auto", dtype: str | torch.dtype = "auto",
               device: str | torch.device = "cpu", attention_backend: str | None = None,
               seed: int = 0) -> LlamaForCausalLM:
    """Build the model for `model` (a directory or a preset name) on `device` and fill its weights.

    load_format: ``"auto"``/``"safetensors"`` read the directory's safetensors; ``"dummy"``
    draws random weights on the device (seeded by `seed`).
    """
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format must be one of {list(LOAD_FORMATS)}, got {load_format!r}")
    config, directory = resolve_model_config(model)
    if directory is None and load_format != "dummy":
        raise ValueError(f"{model!r} is a preset without weights: use load_format='dummy'")
    device = torch.device(device)
    backend = get_backend(attention_backend or default_attention_backend(device))
    net = model_class(config.architecture)(config, backend, resolve_dtype(dtype, config, device), device)
    if load_format == "dummy":
        init_dummy_weights(net, seed)
    else:
        load_safetensors(net, directory)
    return net.eval()


@torch.no_grad()
def init_dummy_weights(model: LlamaForCausalLM, seed: int = 0) -> None:
    """Norm weights 1, everything else N(0, DUMMY_STD), drawn on the model's device."""
    gen = torch.Generator(device=model.device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        else:
            param.normal_(0.0, DUMMY_STD, generator=gen)


def safetensors_files(directory: Path) -> list[Path]:
    """The checkpoint's files: those named by ``model.safetensors.index.json``, or ``model.safetensors``."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        with index.open() as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        files = [directory / n for n in names]
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"files named by {index} are missing: {missing}")
        return files
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {directory}")


@torch.no_grad()
def load_safetensors(model: LlamaForCausalLM, directory: Path) -> None:
    """Copy every checkpoint tensor into its parameter (or fused slice); raise on any mismatch."""
    from safetensors import safe_open

    params = dict(model.named_parameters())
    expected = _expected_tensors(model, params)
    seen: set[str] = set()
    unexpected: list[str] = []
    device = str(model.device)
    for file in safetensors_files(directory):
        with safe_open(str(file), framework="pt", device=device) as f:
            for name in f.keys():
                if name.endswith(_IGNORED_SUFFIXES) or (model.config.tie_word_embeddings and name == "lm_head.weight"):
                    continue
                if name not in expected:
                    unexpected.append(name)
                    continue
                param_name, start, rows = expected[name]
                dst = params[param_name].data
                if rows is not None:
                    dst = dst.narrow(0, start, rows)
                tensor = f.get_tensor(name)
                if tuple(tensor.shape) != tuple(dst.shape):
                    raise ValueError(f"tensor {name!r}: checkpoint shape {tuple(tensor.shape)} does not match "
                                     f"the model's {tuple(dst.shape)}")
                dst.copy_(tensor)
                seen.add(name)
    if unexpected:
        raise ValueError(f"checkpoint has {len(unexpected)} tensors the model does not: {sorted(unexpected)[:10]}")
    missing = sorted(set(expected) - seen)
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} tensors the model needs: {missing[:10]}")


def _expected_tensors(model: LlamaForCausalLM,
                      params: dict[str, torch.nn.Parameter]) -> dict[str, tuple[str, int, int | None]]:
    """Checkpoint tensor name -> (parameter name, first row, rows or None for the whole parameter)."""
    fused: dict[str, list[tuple[str, int, int]]] = {}
    for ckpt_module, (fused_module, start, rows) in model.packed_shards().items():
        fused.setdefault(fused_module, []).append((ckpt_module, start, rows))
    out: dict[str, tuple[str, int, int | None]] = {}
    for pname in params:
        parts = pname.split(".")
        shards = fused.get(parts[-2]) if len(parts) >= 2 else None
        if shards is None:
            out[pname] = (pname, 0, None)
            continue
        for ckpt_module, start, rows in shards:
            out[".".join([*parts[:-2], ckpt_module, parts[-1]])] = (pname, start, rows)
    return out
