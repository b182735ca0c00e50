"""A Llama / Qwen2 decoder, written out so every stage and every validator computes the same thing.

Read it top to bottom: the configuration, the pieces (RMSNorm, rotary embeddings, grouped-query attention,
the SwiGLU MLP), a decoder block, and `StageModel`, which holds the layers [layer_start, layer_end) of one
pipeline stage. Stage 0 also holds the token embedding; the last stage the final norm and the LM head.

Why not call transformers? A stage must hold only its own layers, keep one KV cache per sequence and run a
*ragged* batch: the rows of several sequences, each at its own position (a prefill block of one, single decode
rows of others), through each matmul at once. Attention is the only part that needs the sequence boundaries,
so it runs per sequence; everything else sees one [N, hidden] matrix. Parity with transformers is tested.

`replay` is the validator's view of the same model: one forward over a whole token sequence that returns the
hidden state at every stage boundary and the logits at every position, in one pass.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ledger.errors import InvalidInput

Arch = Literal["llama", "qwen2"]
AttentionImpl = Literal["eager", "sdpa"]
ATTENTION_IMPLS: tuple[str, ...] = ("eager", "sdpa")


class ModelConfigError(InvalidInput):
    """A config.json this decoder cannot run: the message names the field."""


# --------------------------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class RopeParams:
    """Rotary embedding frequencies: plain (`default`), position-interpolated (`linear`) or Llama 3.1 (`llama3`)."""

    theta: float = 10000.0
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def inverse_frequencies(self, head_dim: int) -> torch.Tensor:
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        if self.kind == "linear":
            return inv_freq / self.factor
        if self.kind == "llama3":
            # Long wavelengths are stretched by `factor`, short ones kept, the band between interpolated.
            old_context = self.original_max_position_embeddings
            low_freq_wavelen = old_context / self.low_freq_factor
            high_freq_wavelen = old_context / self.high_freq_factor
            wavelen = 2 * math.pi / inv_freq
            scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / self.factor, inv_freq)
            smooth = (old_context / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
            smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
            medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
            return torch.where(medium, smoothed, scaled)
        return inv_freq


ROPE_KINDS = ("default", "linear", "llama3")


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a model, read from a Hugging Face config.json (old and new rope field layouts)."""

    arch: Arch
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: RopeParams
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    max_position_embeddings: int
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ModelConfigError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.head_dim % 2:
            raise ModelConfigError("head_dim must be even for rotary embeddings")

    @property
    def head_layers(self) -> float:
        """What the LM head costs per token, in decoder layers: vocab x hidden multiply-adds against one
        layer's projections (q, k, v, o and the gated MLP). Attention over the context is left out: it grows
        with the sequence on every layer alike and does not move the balance between stages."""
        attention = self.hidden_size * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        mlp = 3 * self.hidden_size * self.intermediate_size
        return self.vocab_size * self.hidden_size / (attention + mlp)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        arch = data.get("model_type")
        if arch not in ("llama", "qwen2"):
            raise ModelConfigError(f"model_type {arch!r} is not supported (llama, qwen2)")
        if data.get("hidden_act", "silu") != "silu":
            raise ModelConfigError(f"hidden_act {data.get('hidden_act')!r} is not supported (silu)")
        if arch == "qwen2" and data.get("use_sliding_window"):
            raise ModelConfigError("Qwen2 sliding-window attention is not supported")
        try:
            hidden = int(data["hidden_size"])
            heads = int(data["num_attention_heads"])
            head_dim = int(data.get("head_dim") or hidden // heads)
            eos = data.get("eos_token_id")
            eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
            return cls(
                arch=arch,
                vocab_size=int(data["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(data["intermediate_size"]),
                num_layers=int(data["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(data.get("num_key_value_heads") or heads),
                head_dim=head_dim,
                rms_norm_eps=float(data.get("rms_norm_eps", 1e-6)),
                rope=_rope_from_dict(data),
                tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
                qkv_bias=True if arch == "qwen2" else bool(data.get("attention_bias", False)),
                o_bias=False if arch == "qwen2" else bool(data.get("attention_bias", False)),
                mlp_bias=False if arch == "qwen2" else bool(data.get("mlp_bias", False)),
                max_position_embeddings=int(data.get("max_position_embeddings", 2048)),
                bos_token_id=data.get("bos_token_id"),
                eos_token_ids=eos_ids,
            )
        except KeyError as error:
            raise ModelConfigError(f"config.json lacks {error.args[0]!r}") from error

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "ModelConfig":
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise ModelConfigError(f"{path} does not exist")
        return cls.from_dict(json.loads(path.read_text()))


def _rope_from_dict(data: dict[str, Any]) -> RopeParams:
    # transformers >= 5 writes `rope_parameters` (with rope_theta inside); older files `rope_theta` + `rope_scaling`.
    params = dict(data.get("rope_scaling") or {})
    params.update(data.get("rope_parameters") or {})
    theta = float(params.get("rope_theta", data.get("rope_theta", 10000.0)))
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind not in ROPE_KINDS:
        raise ModelConfigError(f"rope type {kind!r} is not supported {ROPE_KINDS}")
    return RopeParams(
        theta=theta,
        kind=kind,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(
            params.get("original_max_position_embeddings", data.get("max_position_embeddings", 8192))
        ),
    )


# --------------------------------------------------------------------------------------------- KV cache


class KVCache:
    """One sequence's keys and values for the layers of one stage, in buffers that double when full.

    `length` counts the positions already processed; a forward writes its new rows at [length, length + n)
    in every layer and only then advances `length`, so a failed forward leaves the cache as it was.
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device):
        self.length = 0
        self._shape = (num_kv_heads, 0, head_dim)
        self._dtype, self._device = dtype, device
        self.keys: list[torch.Tensor] = [torch.empty(self._shape, dtype=dtype, device=device)] * num_layers
        self.values: list[torch.Tensor] = list(self.keys)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[1] if self.keys else 0

    def reserve(self, length: int) -> None:
        if length <= self.capacity:
            return
        capacity = max(64, 1 << (length - 1).bit_length())
        for cache in (self.keys, self.values):
            for layer, old in enumerate(cache):
                new = torch.empty((old.shape[0], capacity, old.shape[2]), dtype=self._dtype, device=self._device)
                new[:, : self.length] = old[:, : self.length]
                cache[layer] = new

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


# --------------------------------------------------------------------------------------------- the pieces


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotary_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [N, head_dim] for absolute `positions` [N] (the two halves repeat, as in Llama)."""
    freqs = positions[:, None].float() * inv_freq[None, :].float()
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [N, heads, head_dim] by its rows' angles."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, impl: AttentionImpl) -> torch.Tensor:
    """Causal attention of n new queries at positions [start, start+n) over keys [0, start+n).

    q [heads, n, d]; k, v [kv_heads, start+n, d]; returns [n, heads * d]. Query i sees key j when j <= start+i.
    """
    heads, n, head_dim = q.shape
    total = k.shape[1]
    groups = heads // k.shape[0]
    if impl == "sdpa":
        mask = None
        causal = n > 1 and start == 0
        if n > 1 and start > 0:
            mask = torch.ones(n, total, dtype=torch.bool, device=q.device).tril(diagonal=start)
        out = F.scaled_dot_product_attention(
            q[None], k[None], v[None], attn_mask=mask, is_causal=causal, enable_gqa=groups > 1
        )[0]
    else:
        if groups > 1:
            k = k.repeat_interleave(groups, dim=0)
            v = v.repeat_interleave(groups, dim=0)
        scores = (q @ k.transpose(1, 2)) * head_dim**-0.5
        if n > 1:
            allowed = torch.ones(n, total, dtype=torch.bool, device=q.device).tril(diagonal=start)
            scores = scores.masked_fill(~allowed, float("-inf"))
        out = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v
    return out.transpose(0, 1).reshape(n, heads * head_dim)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, config.num_heads * config.head_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(hidden, config.num_kv_heads * config.head_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(hidden, config.num_kv_heads * config.head_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.num_heads * config.head_dim, hidden, bias=config.o_bias)

    def forward(self, x, cos, sin, batch: "RaggedBatch", layer: int, impl: AttentionImpl) -> torch.Tensor:
        n = x.shape[0]
        q = apply_rotary(self.q_proj(x).view(n, self.num_heads, self.head_dim), cos, sin)
        k = apply_rotary(self.k_proj(x).view(n, self.num_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).view(n, self.num_kv_heads, self.head_dim)
        outputs = []
        for cache, row, count in zip(batch.caches, batch.offsets, batch.counts):
            start = cache.length
            keys, values = cache.keys[layer], cache.values[layer]
            keys[:, start : start + count] = k[row : row + count].transpose(0, 1)
            values[:, start : start + count] = v[row : row + count].transpose(0, 1)
            q_seq = q[row : row + count].transpose(0, 1)
            outputs.append(attend(q_seq, keys[:, : start + count], values[:, : start + count], start, impl))
        return self.o_proj(outputs[0] if len(outputs) == 1 else torch.cat(outputs))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm decoder layer: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, batch: "RaggedBatch", layer: int, impl: AttentionImpl) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, batch, layer, impl)
        return x + self.mlp(self.post_attention_layernorm(x))


# --------------------------------------------------------------------------------------------- a stage


@dataclass(frozen=True)
class RaggedBatch:
    """Rows of several sequences stacked in one matrix: sequence i owns rows [offsets[i], offsets[i]+counts[i])."""

    caches: tuple[KVCache, ...]
    counts: tuple[int, ...]

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(sum(self.counts[:i]) for i in range(len(self.counts)))

    def positions(self, device: torch.device) -> torch.Tensor:
        return torch.cat(
            [torch.arange(c.length, c.length + n, device=device) for c, n in zip(self.caches, self.counts)]
        )


class StageModel(nn.Module):
    """Layers [layer_start, layer_end) of a model; stage 0 embeds tokens, the last stage norms the output.

    `forward(inputs, caches, counts)` takes token ids [N] (stage 0) or hidden states [N, hidden] (other stages),
    the KV cache of each sequence in the batch and how many rows each contributes (in order), and returns the
    hidden states this stage sends on: the residual stream after its last layer, or, on the last stage, the
    final normed hidden state (the LM head's input). `logits(hidden)` applies the LM head on the last stage.
    """

    def __init__(
        self,
        config: ModelConfig,
        layer_start: int = 0,
        layer_end: int | None = None,
        attn_impl: AttentionImpl = "sdpa",
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        layer_end = config.num_layers if layer_end is None else layer_end
        if not 0 <= layer_start < layer_end <= config.num_layers:
            raise ValueError(f"layers [{layer_start}, {layer_end}) are not a range inside [0, {config.num_layers})")
        if attn_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTENTION_IMPLS}, got {attn_impl!r}")
        self.config, self.layer_start, self.layer_end = config, layer_start, layer_end
        self.attn_impl: AttentionImpl = attn_impl
        self.dtype, self.device = dtype, torch.device(device)
        self.is_first, self.is_last = layer_start == 0, layer_end == config.num_layers
        with torch.device("meta"):
            self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size) if self.is_first else None
            self.layers = nn.ModuleList(Block(config) for _ in range(layer_start, layer_end))
            self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps) if self.is_last else None
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False) if self.is_last else None
        self.register_buffer("inv_freq", config.rope.inverse_frequencies(config.head_dim).to(self.device), persistent=False)

    @property
    def num_layers(self) -> int:
        return self.layer_end - self.layer_start

    def new_cache(self) -> KVCache:
        return KVCache(self.num_layers, self.config.num_kv_heads, self.config.head_dim, self.dtype, self.device)

    @torch.inference_mode()
    def forward(
        self, inputs: torch.Tensor, caches: Sequence[KVCache], counts: Sequence[int] | None = None
    ) -> torch.Tensor:
        hidden, _ = self._run(inputs, caches, counts, capture_after=())
        return hidden

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head is None:
            raise RuntimeError("only the last stage has an LM head")
        return self.lm_head(hidden.to(self.dtype))

    def _run(self, inputs, caches, counts, capture_after: Sequence[int], from_layer: int | None = None,
             to_layer: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`from_layer`: start there with the residual stream entering it (`inputs` are hidden states);
        `to_layer`: stop before it, with the residual stream (no final norm unless it is the model's end)."""
        counts = tuple(counts) if counts is not None else (inputs.shape[0],)
        if len(counts) != len(caches) or sum(counts) != inputs.shape[0] or min(counts) < 1:
            raise ValueError(f"{inputs.shape[0]} rows do not split into {list(counts)} for {len(caches)} caches")
        batch = RaggedBatch(tuple(caches), counts)
        skip = 0 if from_layer is None else from_layer - self.layer_start
        if self.is_first and not skip:
            if inputs.dtype not in (torch.int32, torch.int64) or inputs.dim() != 1:
                raise ValueError("stage 0 takes token ids [N]")
            if int(inputs.min()) < 0 or int(inputs.max()) >= self.config.vocab_size:
                raise ValueError(f"token ids must lie in [0, {self.config.vocab_size})")
            x = self.embed_tokens(inputs.to(self.device))
        else:
            if inputs.dim() != 2 or inputs.shape[1] != self.config.hidden_size:
                raise ValueError(f"stage {self.layer_start}.. takes hidden states [N, {self.config.hidden_size}]")
            x = inputs.to(self.device, self.dtype)
        for cache, n in zip(batch.caches, batch.counts):
            cache.reserve(cache.length + n)
        cos, sin = rotary_cos_sin(self.inv_freq, batch.positions(self.device), self.dtype)
        captured = []
        end = len(self.layers) if to_layer is None else to_layer - self.layer_start
        for index, block in enumerate(self.layers):
            if index < skip or index >= end:
                continue
            x = block(x, cos, sin, batch, index, self.attn_impl)
            if self.layer_start + index + 1 in capture_after:
                captured.append(x)
        for cache, n in zip(batch.caches, batch.counts):
            cache.length += n
        if self.norm is not None and end == len(self.layers):
            x = self.norm(x)
        return x, captured


def replay(
    model: StageModel, token_ids: Sequence[int] | torch.Tensor, boundaries: Sequence[int], logits_from: int = 0
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The validator's single pass: hidden states [T, H] at every stage boundary, and logits [T - logits_from, V]
    for positions logits_from.. (the LM head is the costliest matrix of a small model: the validator only needs
    it where output tokens were sampled, from the prompt's last position on).

    `boundaries` are the stages' `layer_end`s in order; the last must be the model's layer count. For a
    boundary inside the model the tensor is the residual stream after that layer (what that stage sends); for
    the last it is the final normed hidden state, as the last stage sends it.
    """
    if not (model.is_first and model.is_last):
        raise ValueError("replay needs the whole model (layers 0..num_layers)")
    boundaries = list(boundaries)
    if not boundaries or boundaries[-1] != model.config.num_layers or boundaries != sorted(set(boundaries)):
        raise ValueError(f"boundaries must increase and end at {model.config.num_layers}, got {boundaries}")
    tokens = torch.as_tensor(list(token_ids) if not isinstance(token_ids, torch.Tensor) else token_ids, dtype=torch.long)
    with torch.inference_mode():
        final, captured = model._run(tokens, [model.new_cache()], None, capture_after=boundaries[:-1])
        return [*captured, final], model.logits(final[logits_from:])


def replay_from(
    model: StageModel, hidden: torch.Tensor, layer: int, boundaries: Sequence[int], logits_from: int = 0
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """`replay` from the residual stream `hidden` [T, H] entering `layer` instead of from tokens: the
    boundaries after it (`boundaries`, the layer_ends of the stages from the one starting at `layer`) and
    the logits. The validator re-runs an accused stage and those after it on the inputs it really received."""
    if not (model.is_first and model.is_last) or not 0 < layer < model.config.num_layers:
        raise ValueError("replay_from needs the whole model and a layer inside it")
    boundaries = list(boundaries)
    if not boundaries or boundaries[-1] != model.config.num_layers or boundaries[0] <= layer:
        raise ValueError(f"boundaries must lie after layer {layer} and end at {model.config.num_layers}")
    with torch.inference_mode():
        final, captured = model._run(hidden, [model.new_cache()], None, capture_after=boundaries[:-1], from_layer=layer)
        return [*captured, final], model.logits(final[logits_from:])


def boundary_as_sent(
    model: StageModel, start: Any, from_layer: int, ends: Sequence[int], wire: torch.dtype
) -> torch.Tensor:
    """What the stage ending at `ends[-1]` honestly sends when the stages ending at `ends[:-1]` ran before it
    from `start` (token ids when `from_layer` is 0, else the residual stream entering `from_layer`), every
    handoff between them rounded to the `wire` dtype as a pipeline hands it over."""
    with torch.inference_mode():
        x = torch.as_tensor(list(start), dtype=torch.long) if from_layer == 0 else start
        layer = from_layer
        for index, end in enumerate(ends):
            x, _ = model._run(x, [model.new_cache()], None, capture_after=(), from_layer=layer or None, to_layer=end)
            if index < len(ends) - 1:
                x = x.to(wire).to(model.dtype)
            layer = end
        return x
