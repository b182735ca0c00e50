"""The emulated GPU kernels compute the same function as the plain stage (to float rounding), and applying
one to a stage leaves every other stage, and the plain path, as it was."""

from __future__ import annotations

import torch

from node.pipeline.calibration_cheats import fp8_e4m3, int4_per_group, int8_per_channel, low_rank, sparse_2_4
from node.pipeline.kernel_variants import (
    KernelVariant,
    apply_kernel_variant,
    flash_attend,
    quantize_kv,
    round_to_tf32,
    split_k_matmul,
)
from node.pipeline.model import attend
from node.pipeline.weights import load_stage


def test_flash_attention_matches_attention_in_fp32_for_prefill_and_decode():
    torch.manual_seed(0)
    k, v = torch.randn(2, 40, 16), torch.randn(2, 40, 16)
    prefill = torch.randn(4, 40, 16)
    decode = torch.randn(4, 1, 16)
    assert torch.allclose(flash_attend(prefill, k, v, 0, 16), attend(prefill, k, v, 0, "eager"), atol=1e-5)
    assert torch.allclose(flash_attend(decode, k, v, 39, 16), attend(decode, k, v, 39, "sdpa"), atol=1e-5)


def test_split_k_products_differ_only_by_rounding():
    torch.manual_seed(0)
    x, w = torch.randn(5, 64), torch.randn(12, 64)
    exact = x.double() @ w.double().T
    assert torch.allclose(split_k_matmul(x, w, "split_k_fp32", 4).double(), exact, atol=1e-4)
    low = split_k_matmul(x.bfloat16(), w.bfloat16(), "split_k_lowp", 4)
    assert low.dtype == torch.bfloat16
    assert torch.allclose(low.double(), exact, rtol=0.05, atol=0.3)
    tf32 = split_k_matmul(x, w, "tf32", 1)
    assert 0 < (tf32.double() - exact).abs().max() < 0.05


def test_tf32_keeps_ten_mantissa_bits():
    x = torch.tensor([1.0 + 2**-11, 1.0 + 2**-10, 3.0])
    assert round_to_tf32(x).tolist() == [1.0 + 2**-10, 1.0 + 2**-10, 3.0]


def test_a_variant_changes_only_the_stage_it_is_applied_to(tiny_dirs):
    plain = load_stage(tiny_dirs["llama"], 0, 2, dtype=torch.bfloat16)
    varied = apply_kernel_variant(
        load_stage(tiny_dirs["llama"], 0, 2, dtype=torch.bfloat16),
        KernelVariant("all", matmul="split_k_lowp", attention="flash", norm="low_precision", flash_block=4),
    )
    tokens = torch.arange(3, 20)
    a, b = plain(tokens, [plain.new_cache()]), varied(tokens, [varied.new_cache()])
    again = load_stage(tiny_dirs["llama"], 0, 2, dtype=torch.bfloat16)
    assert torch.equal(a, again(tokens, [again.new_cache()]))  # the plain path is untouched
    assert not torch.equal(a, b)
    assert (a.float() - b.float()).norm() < 0.05 * a.float().norm()  # the same function, rounded otherwise


def test_cheap_weights_are_what_they_claim():
    torch.manual_seed(0)
    w = torch.randn(8, 128)
    assert (sparse_2_4(w).reshape(8, 32, 4) == 0).sum(-1).eq(2).all()
    assert len(int4_per_group(w)[:, :64].unique()) <= 8 * 16  # 16 levels per row and group
    assert len(int8_per_channel(w)[0].unique()) <= 255
    assert torch.linalg.matrix_rank(low_rank(w)) == 2
    assert 0 < (fp8_e4m3(w) - w).abs().max() < 0.1 * w.abs().max()
    kv = torch.randn(3, 2, 16)
    assert 0 < (quantize_kv(kv, "fp8") - kv).abs().max() < 0.1 and torch.equal(quantize_kv(kv, "native"), kv)
