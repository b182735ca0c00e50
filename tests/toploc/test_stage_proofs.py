"""Stage-wise proofs: the schedule, the streaming builder, and the validator's check of one stage."""

from __future__ import annotations

import pytest
import torch

from node.toploc.activation import (
    ProofBuilder,
    build_proofs,
    expected_proof_count,
    split_replay,
    verify_proofs,
)
from node.toploc.codec import PROOF_BYTES
from node.toploc.thresholds import ACTIVATION


def _activations(prompt_len: int, decode_rows: int, hidden: int = 256, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(prompt_len, hidden, generator=generator), torch.randn(decode_rows, hidden, generator=generator)


@pytest.mark.parametrize("decode_rows", [0, 1, 31, 32, 33, 70])
def test_streaming_builder_gives_the_batch_proofs(decode_rows):
    prefill, decode = _activations(9, decode_rows)
    builder = ProofBuilder()
    streamed = [builder.add_prefill(prefill)]
    for row in decode:
        proof = builder.add_decode_row(row)
        if proof is not None:
            streamed.append(proof)
    last = builder.finish()
    if last is not None:
        streamed.append(last)
    assert streamed == build_proofs(prefill, decode) == list(builder.proofs)
    assert len(streamed) == expected_proof_count(9, decode_rows)
    assert all(len(proof) == PROOF_BYTES for proof in streamed)


def test_builder_refuses_out_of_order_use():
    builder = ProofBuilder()
    builder.add_decode_row(torch.randn(256))
    with pytest.raises(RuntimeError):
        builder.add_prefill(torch.randn(3, 256))
    with pytest.raises(ValueError):
        builder.add_decode_row(torch.randn(128))
    builder.finish()
    with pytest.raises(RuntimeError):
        builder.finish()


def test_float32_and_bf16_rows_prove_the_same():
    prefill, decode = _activations(5, 40)
    assert build_proofs(prefill, decode) == build_proofs(prefill.bfloat16(), decode.bfloat16())


def test_honest_replay_passes_with_raw_figures():
    prefill, decode = _activations(9, 70)
    proofs = build_proofs(prefill, decode)
    replay = torch.cat([prefill, decode]) + 1e-7 * torch.randn(79, 256)  # another kernel's rounding
    check = verify_proofs(*split_replay(replay, 9), proofs)
    assert check.ok and check.first_failure is None and check.reason is None
    assert [c.kind for c in check.chunks] == ["prefill", "decode", "decode", "decode"]
    assert [c.rows for c in check.chunks] == [(0, 9), (9, 41), (41, 73), (73, 79)]
    assert all(c.figures.exp_mismatches <= 1 for c in check.chunks)
    assert check.thresholds == ACTIVATION
    assert check.to_dict()["chunks"][0]["figures"]["points"] == 128


def test_the_first_altered_chunk_is_named():
    prefill, decode = _activations(9, 70)
    proofs = build_proofs(prefill, decode)
    altered = decode.clone()
    altered[40:50] *= 1.05  # chunk 2 holds decode rows 32..63
    altered[65] = -altered[65]  # chunk 3 holds 64..69
    check = verify_proofs(prefill, altered, proofs)
    assert not check.ok and check.first_failure == 2
    assert [c.ok for c in check.chunks] == [True, True, False, False]
    assert "decode chunk 2" in check.reason and "mantissa" in check.reason


def test_missing_extra_and_malformed_proofs_fail_the_stage():
    prefill, decode = _activations(4, 40)
    proofs = build_proofs(prefill, decode)
    missing = verify_proofs(prefill, decode, proofs[:-1])
    assert not missing.ok and missing.first_failure == 2 and missing.chunks[2].error == "proof missing"
    extra = verify_proofs(prefill, decode, proofs + [proofs[0]])
    assert not extra.ok and extra.first_failure == 3
    garbled = verify_proofs(prefill, decode, [proofs[0], b"\x01", proofs[2]])
    assert not garbled.ok and garbled.first_failure == 1 and garbled.chunks[1].figures is None
    swapped = verify_proofs(prefill, decode, [proofs[1], proofs[0], proofs[2]])
    assert not swapped.ok and swapped.first_failure == 0


def test_bad_replay_tensors_are_the_callers_error():
    with pytest.raises(ValueError):
        verify_proofs(torch.randn(3), None, [])
    with pytest.raises(ValueError):
        split_replay(torch.randn(5, 8), 6)


def test_device_and_host_selection_agree_on_ties():
    """CUDA chunks take the torch path of the top-k selection; it must pick what the numpy path picks."""
    import numpy as np

    from node.toploc.codec import _bf16_words, _select_words

    generator = torch.Generator().manual_seed(5)
    for shape in [(32, 576), (9, 2048), (1, 4096)]:
        chunk = (torch.randn(shape, generator=generator) * 4).round() / 4  # coarse values: many ties
        host = _bf16_words(chunk)
        device_path = torch.from_numpy(host.view(np.int16))
        a, b = _select_words(host, 128), _select_words(device_path, 128)
        assert a.tied.size > a.need  # the boundary really is ambiguous
        assert np.array_equal(a.above, b.above) and np.array_equal(a.tied, b.tied) and a.need == b.need
        assert np.array_equal(a.settle(a.tied[: a.need])[1], b.settle(b.tied[: b.need])[1])
