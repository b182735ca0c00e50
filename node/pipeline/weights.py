"""Loading one stage's weights from a model directory, and the model's identity.

A stage reads the safetensors files tensor by tensor (`safe_open`) and takes only what it runs: its own
layers, plus the embedding on stage 0 and the final norm and LM head on the last stage (the embedding again
when the head is tied to it). So a stage process holds about its share of the weights, never the whole model.

`model_id` names a model by value: keccak256 of its weight manifest (each weight and config file's name and
sha256), so two directories with the same bytes are the same model wherever they live.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import torch
from eth_hash.auto import keccak
from safetensors import safe_open

from ledger.errors import InvalidInput
from node.pipeline.model import AttentionImpl, ModelConfig, StageModel


class WeightsError(InvalidInput):
    """A model directory that lacks a tensor, or holds one of the wrong shape."""


def weight_files(model_dir: str | Path) -> list[Path]:
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise WeightsError(f"{model_dir} holds no *.safetensors files")
    return files


def _sources(stage: StageModel, available: frozenset[str]) -> dict[str, list[str]]:
    """Which file tensors this stage reads, and the parameter name(s) each one fills."""
    sources: dict[str, list[str]] = {}
    for name in dict(stage.named_parameters()):
        if name.startswith("layers."):
            index, rest = name.split(".", 2)[1:]
            hf_name = f"model.layers.{stage.layer_start + int(index)}.{rest}"
        elif name == "embed_tokens.weight":
            hf_name = "model.embed_tokens.weight"
        elif name == "norm.weight":
            hf_name = "model.norm.weight"
        elif name == "lm_head.weight":
            tied = stage.config.tie_word_embeddings or "lm_head.weight" not in available
            hf_name = "model.embed_tokens.weight" if tied else "lm_head.weight"
        else:
            raise AssertionError(name)
        sources.setdefault(hf_name, []).append(name)
    return sources


def load_stage(
    model_dir: str | Path,
    layer_start: int = 0,
    layer_end: int | None = None,
    attn_impl: AttentionImpl = "sdpa",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> StageModel:
    """A StageModel for layers [layer_start, layer_end) with only its own tensors read from disk."""
    config = ModelConfig.from_dir(model_dir)
    stage = StageModel(config, layer_start, layer_end, attn_impl=attn_impl, dtype=dtype, device=device)
    wanted = {name: tuple(p.shape) for name, p in stage.named_parameters()}
    sources = _sources(stage, _tensor_names(str(Path(model_dir).resolve())))
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(model_dir):
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for hf_name in handle.keys():
                names = sources.get(hf_name)
                if not names:
                    continue
                tensor = handle.get_tensor(hf_name)
                for name in names:
                    if tuple(tensor.shape) != wanted[name]:
                        raise WeightsError(f"{hf_name} has shape {tuple(tensor.shape)}, expected {wanted[name]}")
                    state[name] = tensor.to(device, dtype)
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise WeightsError(f"{model_dir} lacks tensors for layers [{layer_start}, {stage.layer_end}): {missing[:5]}")
    stage.load_state_dict(state, assign=True, strict=True)
    if stage.is_first and stage.is_last and sources.get("model.embed_tokens.weight") == ["embed_tokens.weight", "lm_head.weight"]:
        stage.lm_head.weight = stage.embed_tokens.weight  # tied: one tensor, not two copies
    return stage.eval()


@lru_cache(maxsize=64)
def _tensor_names(model_dir: str) -> frozenset[str]:
    names: set[str] = set()
    for path in weight_files(model_dir):
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            names.update(handle.keys())
    return frozenset(names)


def manifest(model_dir: str | Path) -> list[tuple[str, str]]:
    """(file name, sha256 hex) of config.json and every weight file, sorted by name."""
    model_dir = Path(model_dir)
    paths = [model_dir / "config.json", *weight_files(model_dir)]
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        paths.append(index)
    return sorted((p.name, _sha256_file(str(p), *_stat_key(p))) for p in paths)


def model_id(model_dir: str | Path) -> str:
    """0x-prefixed keccak256 of the manifest, one `name sha256` line per file (cached by file size and mtime)."""
    lines = "".join(f"{name} {digest}\n" for name, digest in manifest(model_dir))
    return "0x" + keccak(lines.encode()).hex()


def _stat_key(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


@lru_cache(maxsize=256)
def _sha256_file(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_model_dir(reference: str | Path) -> Path:
    """A model directory from a path, or from a Hugging Face repo id already in the local HF cache (offline:
    nothing is downloaded)."""
    path = Path(reference).expanduser()
    if path.is_dir():
        return path
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(reference), local_files_only=True))
    except Exception as error:  # not a repo id, or not in the cache
        raise WeightsError(f"{reference} is neither a directory nor a model in the local Hugging Face cache ({error})") from None


def read_generation_defaults(model_dir: str | Path) -> dict:
    """generation_config.json when present (EOS ids for stopping), else {}."""
    path = Path(model_dir) / "generation_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}
