"""Frames and signed handoff values: what goes on a link decodes to exactly what was sent, or is refused."""

from __future__ import annotations

import pytest
import torch

from node.pipeline.wire import FrameError, decode_frame, decode_message, encode_frame, encode_message, wire_bytes
from node.protocol.complaints import Complaint
from node.protocol.handoff import HandoffClaim, rows_digest
from node.protocol.signing import SigningKey
from node.validator.handoff_faults import judge_evidence, rebuilt_proof

JOB_A, JOB_B = b"\x01" * 32, b"\x02" * 32


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_a_frame_round_trips_in_every_wire_dtype(dtype):
    rows_a, rows_b = torch.randn(5, 16), torch.randn(1, 16)
    data = encode_frame([(JOB_A, 0, rows_a), (JOB_B, 7, rows_b)], dtype)
    frame = decode_frame(data, 16)
    (entry_a, got_a), (entry_b, got_b) = frame.split()
    assert (entry_a.job_id, entry_a.start, entry_a.count) == (JOB_A, 0, 5)
    assert (entry_b.job_id, entry_b.start, entry_b.count) == (JOB_B, 7, 1)
    wire = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    assert torch.equal(got_a, rows_a.to(wire)) and torch.equal(got_b, rows_b.to(wire))
    assert len(data) == 12 + 2 * 40 + 6 * 16 * got_a.element_size()


def test_broken_frames_are_refused_with_a_reason():
    good = encode_frame([(JOB_A, 0, torch.randn(2, 8))], "fp32")
    with pytest.raises(FrameError, match="payload"):
        decode_frame(good[:-1], 8)
    with pytest.raises(FrameError, match="hidden size"):
        decode_frame(good, 16)
    with pytest.raises(FrameError, match="magic"):
        decode_frame(b"XXXX" + good[4:], 8)
    with pytest.raises(FrameError, match="shorter"):
        decode_frame(good[:5], 8)
    with pytest.raises(FrameError, match="non-finite"):
        decode_frame(encode_frame([(JOB_A, 0, torch.full((1, 8), float("nan")))], "fp32"), 8)
    with pytest.raises(FrameError):
        decode_message("[1, 2]")
    assert decode_message(encode_message("end", job="0x01")) == {"type": "end", "job": "0x01"}


def test_a_handoff_claim_is_signed_by_who_it_names_and_binds_every_field():
    sender = SigningKey.generate()
    claim = HandoffClaim(JOB_A, 1, 3, 40, 32, "bf16", b"\x05" * 32, b"\x07" * 258)
    signature = claim.sign(sender)
    assert claim.signer(signature) == sender.address and claim.signed_by(signature, sender.address)
    for changed in (dict(chunk_index=4), dict(start=41), dict(count=31), dict(dtype="fp32"),
                    dict(rows_digest=b"\x06" * 32), dict(proof=b"\x08" * 258), dict(sender_stage=2)):
        assert not HandoffClaim(**{**claim.__dict__, **changed}).signed_by(signature, sender.address), changed
    assert not claim.signed_by(b"\x00" * 65, sender.address)  # a signature that does not recover is no one's


def _evidence(sender, rows: torch.Tensor, *, chunk: int = 0, proof: bytes | None = None, sent: torch.Tensor | None = None):
    """A sender's signed claim over `sent` (default `rows`) with `proof` (default the honest proof of `rows`)."""
    data = wire_bytes(sent if sent is not None else rows, "bf16")
    honest = rebuilt_proof(wire_bytes(rows, "bf16"), "bf16", rows.shape[0], prefill=chunk == 0)
    claim = HandoffClaim(JOB_A, 0, chunk, 0 if chunk == 0 else 7, rows.shape[0], "bf16", rows_digest(data),
                         honest if proof is None else proof)
    return Complaint(1, claim, claim.sign(sender), data)


@pytest.mark.parametrize("chunk", [0, 1])
def test_evidence_is_judged_without_a_model_and_blames_only_a_lying_sender(chunk):
    sender, other = SigningKey.generate(), SigningKey.generate()
    rows = torch.randn(6, 16)
    honest = _evidence(sender, rows, chunk=chunk)
    assert not judge_evidence(honest, sender.address)  # rows and proof agree: the complaint is false
    lying = _evidence(sender, rows, chunk=chunk, sent=rows * 1.5)  # signed bytes other than it proved
    assert judge_evidence(lying, sender.address)
    assert not judge_evidence(lying, other.address)  # the signature must be the named sender's
    forged_rows = Complaint(1, honest.claim, honest.sender_signature, wire_bytes(rows * 1.5, "bf16"))
    assert not judge_evidence(forged_rows, sender.address)  # bytes the sender never signed prove nothing
    invented = _evidence(other, rows, chunk=chunk, proof=b"\x07" * 258)
    assert not judge_evidence(invented, sender.address)  # a proof the receiver made up, signed by itself
