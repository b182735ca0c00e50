"""Emulated GPU kernels: honest ways of computing a stage in its declared precision that CPU torch does not
take by itself, so the calibration and the tests can measure the drift a GPU worker brings without a GPU.

A `KernelVariant` names one choice per kind of kernel; `apply_kernel_variant(stage, variant)` swaps the
forward of the stage's modules *on that instance only* (linear layers, attention, RMS norms), so the plain
`StageModel` path stays exactly as it is and pays nothing. What each choice emulates:

- matmul `split_k_fp32`: the reduction over K cut into `splits` slices whose partial products are summed in
  fp32 in the reverse order (cuBLAS split-K / stream-K with an fp32 workspace), rounded once to the
  declared dtype — the usual GPU path; `split_k_lowp`: every partial rounded to the declared dtype and the
  partials summed in it (split-K reduced in the output dtype, the worst honest case);
  `tf32`: fp32 inputs rounded to TF32's 10-bit mantissa before an fp32-accumulated product (Ampere+ with
  `allow_tf32`), meaningful for fp32 only.
- attention `flash`: FlashAttention-2's online softmax over key blocks of `flash_block`: fp32 running max,
  sum and accumulator, the probabilities cast to the declared dtype before the product with V.
- norm `low_precision`: RMSNorm computed entirely in the declared dtype (fused kernels that skip the fp32
  upcast).

`kv_cache` is not a kernel but a cheat (an fp8 / int8 KV cache where the declared precision's is wanted);
it lives here because it replaces the same attention forward.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from node.pipeline.model import Attention, RMSNorm, StageModel, apply_rotary, attend

Matmul = Literal["native", "split_k_fp32", "split_k_lowp", "tf32"]
AttentionKernel = Literal["native", "flash"]
Norm = Literal["native", "low_precision"]
KVCacheFormat = Literal["native", "fp8", "int8"]


@dataclass(frozen=True)
class KernelVariant:
    name: str = "native"
    matmul: Matmul = "native"
    splits: int = 4
    attention: AttentionKernel = "native"
    flash_block: int = 64
    norm: Norm = "native"
    kv_cache: KVCacheFormat = "native"

    @property
    def is_native(self) -> bool:
        return (self.matmul, self.attention, self.norm, self.kv_cache) == ("native", "native", "native", "native")


NATIVE = KernelVariant()


def gpu_like_variants(dtype: torch.dtype) -> list[KernelVariant]:
    """The honest emulated kernels for a declared dtype (TF32 only where fp32 is declared)."""
    variants = [
        KernelVariant("split-K x4, fp32 accumulation", matmul="split_k_fp32", splits=4),
        KernelVariant("split-K x3, fp32 accumulation + flash attention", matmul="split_k_fp32", splits=3, attention="flash",
                      flash_block=128),
        KernelVariant("flash attention (block 64)", attention="flash", flash_block=64),
        KernelVariant("norms in the declared dtype", norm="low_precision"),
    ]
    if dtype != torch.float32:
        variants += [
            KernelVariant("split-K x2, partials summed in the declared dtype", matmul="split_k_lowp", splits=2),
            KernelVariant(
                "split-K x4 in the declared dtype + flash + low-precision norms",
                matmul="split_k_lowp", splits=4, attention="flash", flash_block=64, norm="low_precision",
            ),
        ]
    return variants


def apply_kernel_variant(stage: StageModel, variant: KernelVariant) -> StageModel:
    """Make `stage` compute with `variant`'s kernels (in place; returns the stage)."""
    if variant.is_native:
        return stage
    for module in stage.modules():
        if isinstance(module, nn.Linear) and variant.matmul != "native":
            module.forward = types.MethodType(_linear_forward(variant), module)
        elif isinstance(module, Attention) and (variant.attention != "native" or variant.kv_cache != "native"):
            module.forward = types.MethodType(_attention_forward(variant), module)
        elif isinstance(module, RMSNorm) and variant.norm == "low_precision":
            module.forward = types.MethodType(_low_precision_norm, module)
    return stage


# --------------------------------------------------------------------------------------------- matrix products


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """fp32 values rounded (to nearest, ties away) to TF32's 10 explicit mantissa bits."""
    bits = x.float().contiguous().view(torch.int32)
    rounded = (bits + 0x1000) & ~0x1FFF
    return rounded.view(torch.float32)


def split_k_matmul(x: torch.Tensor, weight: torch.Tensor, matmul: Matmul, splits: int) -> torch.Tensor:
    """x [N, K] @ weight[M, K].T computed as `matmul` says, returned in x's dtype."""
    dtype = x.dtype
    if matmul == "tf32":
        return (round_to_tf32(x) @ round_to_tf32(weight).T).to(dtype)
    bounds = torch.linspace(0, x.shape[-1], splits + 1).round().long().tolist()
    partials = [x[..., a:b].float() @ weight[:, a:b].float().T for a, b in zip(bounds, bounds[1:]) if b > a]
    if matmul == "split_k_lowp":
        total = partials[0].to(dtype)
        for partial in partials[1:]:
            total = total + partial.to(dtype)
        return total
    total = partials[-1]
    for partial in reversed(partials[:-1]):
        total = total + partial
    return total.to(dtype)


def _linear_forward(variant: KernelVariant):
    def forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        out = split_k_matmul(x, self.weight, variant.matmul, variant.splits)
        return out if self.bias is None else out + self.bias

    return forward


# --------------------------------------------------------------------------------------------- attention


def flash_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, block: int) -> torch.Tensor:
    """`attend` as FlashAttention-2 computes it: q [heads, n, d], k/v [kv_heads, start+n, d] -> [n, heads*d]."""
    heads, n, head_dim = q.shape
    groups = heads // k.shape[0]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=0), v.repeat_interleave(groups, dim=0)
    total, dtype = k.shape[1], q.dtype
    scale = head_dim**-0.5
    running_max = torch.full((heads, n, 1), float("-inf"))
    running_sum = torch.zeros(heads, n, 1)
    acc = torch.zeros(heads, n, head_dim)
    query_pos = torch.arange(start, start + n)[:, None]
    for a in range(0, total, block):
        b = min(total, a + block)
        scores = (q.float() @ k[:, a:b].float().transpose(1, 2)) * scale
        allowed = torch.arange(a, b)[None, :] <= query_pos
        scores = scores.masked_fill(~allowed, float("-inf"))
        new_max = torch.maximum(running_max, scores.amax(-1, keepdim=True))
        safe_max = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        probs = torch.exp(scores - safe_max)
        correction = torch.exp(torch.where(torch.isfinite(running_max), running_max - safe_max, torch.full_like(running_max, float("-inf"))))
        running_sum = running_sum * correction + probs.sum(-1, keepdim=True)
        acc = acc * correction + probs.to(dtype).float() @ v[:, a:b].float()
        running_max = new_max
    out = (acc / running_sum).to(dtype)
    return out.transpose(0, 1).reshape(n, heads * head_dim)


def quantize_kv(x: torch.Tensor, fmt: KVCacheFormat) -> torch.Tensor:
    """Keys or values [n, kv_heads, d] through an fp8 (e4m3, per-head-row scale) or int8 (per-row absmax)
    cache and back, in x's dtype."""
    if fmt == "native":
        return x
    absmax = x.float().abs().amax(-1, keepdim=True).clamp_min(1e-12)
    if fmt == "fp8":
        scale = absmax / 448.0
        return ((x.float() / scale).to(torch.float8_e4m3fn).float() * scale).to(x.dtype)
    scale = absmax / 127.0
    return ((x.float() / scale).round().clamp(-127, 127) * scale).to(x.dtype)


def _attention_forward(variant: KernelVariant):
    def forward(self: Attention, x, cos, sin, batch, layer: int, impl) -> torch.Tensor:
        n = x.shape[0]
        q = apply_rotary(self.q_proj(x).view(n, self.num_heads, self.head_dim), cos, sin)
        k = apply_rotary(self.k_proj(x).view(n, self.num_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).view(n, self.num_kv_heads, self.head_dim)
        k, v = quantize_kv(k, variant.kv_cache), quantize_kv(v, variant.kv_cache)
        outputs = []
        for cache, row, count in zip(batch.caches, batch.offsets, batch.counts):
            start = cache.length
            keys, values = cache.keys[layer], cache.values[layer]
            keys[:, start : start + count] = k[row : row + count].transpose(0, 1)
            values[:, start : start + count] = v[row : row + count].transpose(0, 1)
            q_seq = q[row : row + count].transpose(0, 1)
            if variant.attention == "flash":
                out = flash_attend(q_seq, keys[:, : start + count], values[:, : start + count], start, variant.flash_block)
            else:
                out = attend(q_seq, keys[:, : start + count], values[:, : start + count], start, impl)
            outputs.append(out)
        return self.o_proj(outputs[0] if len(outputs) == 1 else torch.cat(outputs))

    return forward


# --------------------------------------------------------------------------------------------- norms


def _low_precision_norm(self: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

