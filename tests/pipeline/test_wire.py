"""Frames and signed handoff values: what goes on a link decodes to exactly what was sent, or is refused."""

from __future__ import annotations

import pytest
import torch

from node.pipeline.handoff import Complaint, make_complaint, proof_signer, sign_proof
from node.pipeline.wire import FrameError, decode_frame, decode_message, encode_frame, encode_message
from node.signing import SigningKey

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


def test_chunk_proofs_and_complaints_are_signed_by_who_they_name():
    sender, receiver = SigningKey.generate(), SigningKey.generate()
    proof, rebuilt = b"\x07" * 258, b"\x08" * 258
    signature = sign_proof(sender, JOB_A, 1, 3, proof)
    assert proof_signer(JOB_A, 1, 3, proof, signature) == sender.address
    assert proof_signer(JOB_A, 1, 4, proof, signature) != sender.address  # bound to the chunk index
    complaint = make_complaint(receiver, JOB_A, 2, 3, proof, rebuilt, signature)
    assert complaint.signer() == receiver.address == complaint.complainer
    assert complaint.sender_stage == 1 and complaint.claimed_digest != complaint.rebuilt_digest
    again = Complaint.from_json(complaint.to_json())
    assert again == complaint and again.signer() == receiver.address
