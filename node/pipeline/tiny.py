"""Tiny random-init Llama and Qwen2 models for tests and benches, built by transformers from a fixed seed.

They are real Hugging Face checkpoints (config.json + model.safetensors written by `save_pretrained`), so
the same code path loads them as loads SmolLM2, and transformers itself can be the reference in parity tests.
The weights are drawn with a wider spread than the usual 0.02 so that the logits have clear winners: greedy
decoding then does not hinge on float rounding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal


def tiny_model_dir(
    arch: Literal["llama", "qwen2"],
    seed: int,
    path: str | Path,
    num_layers: int = 6,
    hidden: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate: int = 128,
    vocab_size: int = 256,
    tie_word_embeddings: bool = False,
    initializer_range: float = 0.15,
    rope_scaling: dict | None = None,
) -> Path:
    """Write a random-init model to `path` (created) and return it; the same arguments give the same bytes.

    An existing directory written with the same arguments is reused, so session fixtures are cheap.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if arch not in ("llama", "qwen2"):
        raise ValueError(f"arch must be 'llama' or 'qwen2', got {arch!r}")
    path = Path(path)
    recipe = dict(
        arch=arch, seed=seed, num_layers=num_layers, hidden=hidden, num_heads=num_heads, num_kv_heads=num_kv_heads,
        intermediate=intermediate, vocab_size=vocab_size, tie=tie_word_embeddings, init=initializer_range,
        rope_scaling=rope_scaling,
    )
    stamp = path / "tiny-recipe.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == recipe and (path / "model.safetensors").is_file():
        return path
    config_class, model_class = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    extra = {}
    if rope_scaling is not None:
        extra["rope_parameters"] = {"rope_theta": 10000.0, **rope_scaling}
    config = config_class(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=tie_word_embeddings,
        initializer_range=initializer_range,
        bos_token_id=1,
        eos_token_id=2,
        **extra,
    )
    torch.manual_seed(seed)
    model = model_class(config).eval()
    if arch == "qwen2":
        # transformers zero-inits biases; give the qkv biases values so the test sees them used.
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0.0, initializer_range)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    stamp.write_text(json.dumps(recipe))
    return path
