"""Bundles: canonical JSON round trips, hostile input refused with clear errors, receipts tied to the spec."""

import dataclasses
import json

import pytest

from node.protocol.bundle import (
    Bundle,
    BundleError,
    SignedStage,
    check_receipts,
    check_signers,
    recover_signers,
    verify_bundle,
)
from node.protocol.complaints import Complaint
from node.protocol.handoff import HandoffClaim, ReceivedHandoff, rows_digest
from node.protocol.receipts import ReceiptDomain, expected_receipt, proofs_digest, sign_receipt
from node.protocol.signing import SigningKey

from .conftest import CONTRACT, make_bundle


def test_json_round_trip_is_canonical(bundle):
    text = bundle.to_json()
    again = Bundle.from_json(text)
    assert again == bundle
    assert again.to_json() == text
    assert again.job_id == bundle.spec.job_id
    assert Bundle.from_json(text.encode()) == bundle


def test_signers_are_the_assigned_workers(bundle, keys, domain):
    assert recover_signers(bundle, domain) == tuple(k.address for k in keys)
    assert verify_bundle(bundle, domain) == tuple(k.address for k in keys)


def test_a_stage_signed_by_someone_else_is_refused(bundle, domain):
    intruder = SigningKey.generate()
    stage = bundle.stages[1]
    forged = dataclasses.replace(stage, signature=sign_receipt(intruder, stage.receipt, domain))
    tampered = dataclasses.replace(bundle, stages=(bundle.stages[0], forged, bundle.stages[2]))
    check_receipts(tampered)  # the receipt itself is what the spec implies...
    with pytest.raises(BundleError, match=f"stage 1 receipt is signed by {intruder.address}"):
        check_signers(tampered, domain)  # ...but the wrong key signed it


def test_a_bundle_for_another_deployment_is_refused(bundle):
    other = ReceiptDomain(chain_id=1, verifying_contract=CONTRACT)
    with pytest.raises(BundleError, match="not by its assigned worker"):
        check_signers(bundle, other)


def test_receipt_that_disagrees_with_the_spec_is_named(bundle, keys, domain):
    stage = bundle.stages[2]
    lying = dataclasses.replace(stage.receipt, work_units=stage.receipt.work_units * 2)
    signed = SignedStage(lying, sign_receipt(keys[2], lying, domain), stage.proofs)
    tampered = dataclasses.replace(bundle, stages=bundle.stages[:2] + (signed,))
    with pytest.raises(BundleError, match="stage 2 receipt does not match the job: work_units differ"):
        check_receipts(tampered)


def test_a_receipt_for_another_precision_than_the_jobs_is_refused(bundle, keys, domain):
    """Attack (PROTOCOL I8): a stage that computed in bf16 signs receipts saying so, for a job declared fp32.
    Its signed precision is not the job's: the bundle is refused before any replay."""
    stage = bundle.stages[1]
    assert bundle.spec.precision == "fp32"
    other = dataclasses.replace(stage.receipt, precision="bf16")
    signed = SignedStage(other, sign_receipt(keys[1], other, domain), stage.proofs)
    tampered = dataclasses.replace(bundle, stages=(bundle.stages[0], signed, bundle.stages[2]))
    with pytest.raises(BundleError, match="stage 1 receipt does not match the job: precision differ"):
        check_receipts(tampered)


def test_a_bundle_that_relabels_an_fp32_job_as_bf16_is_another_job(bundle, keys, domain):
    """Attack: the receipts of an fp32 job re-used under a spec that claims bf16 (the validator would then
    judge with bf16's looser thresholds). The precision is in the job id, so every receipt names another job;
    re-signed receipts make a bundle for a job id nobody issued (the validator's spec guard refuses it)."""
    relabelled = dataclasses.replace(bundle, spec=dataclasses.replace(bundle.spec, precision="bf16"))
    assert relabelled.job_id != bundle.job_id
    with pytest.raises(BundleError, match="stage 0 receipt does not match the job: job_id, precision differ"):
        check_receipts(relabelled)


def test_swapped_proofs_break_the_digest(bundle):
    stage = bundle.stages[0]
    swapped = dataclasses.replace(stage, proofs=stage.proofs[::-1])
    tampered = dataclasses.replace(bundle, stages=(swapped,) + bundle.stages[1:])
    with pytest.raises(BundleError, match="proofs_digest differ"):
        check_receipts(tampered)


def test_changed_output_breaks_the_last_receipt(bundle):
    tampered = dataclasses.replace(bundle, output_token_ids=bundle.output_token_ids[:-1] + (5,))
    with pytest.raises(BundleError, match="stage 2 receipt does not match the job: tokens_digest differ"):
        check_receipts(tampered)


def test_wrong_number_of_proofs_is_refused(keys, domain):
    bundle = make_bundle(keys, domain)
    spec, output = bundle.spec, bundle.output_token_ids
    proofs = bundle.stages[1].proofs[:-1]
    receipt = expected_receipt(spec, 1, output, proofs, received_proofs=bundle.stages[0].proofs)
    short = SignedStage(receipt, sign_receipt(keys[1], receipt, domain), proofs)
    tampered = dataclasses.replace(bundle, stages=(bundle.stages[0], short, bundle.stages[2]))
    with pytest.raises(BundleError, match="stage 1 has 2 proofs; 40 output tokens need 3"):
        check_receipts(tampered)


def _evidence(keys, bundle, rows: bytes = b"\x01\x02" * 64) -> Complaint:
    claim = HandoffClaim(bundle.job_id, 0, 0, 0, 4, "bf16", rows_digest(rows), b"\x01" * 258)  # the 4-token prefill
    return Complaint(1, claim, claim.sign(keys[0]), rows)


def test_a_complaint_round_trips_with_its_evidence_and_names_its_signer(bundle, keys, domain):
    complaint = _evidence(keys, bundle).signed(keys[1], domain)
    stopped = Bundle(bundle.spec, bundle.stages[:1], (), (complaint,))
    assert not stopped.complete
    again = Bundle.from_json(stopped.to_json())
    assert again == stopped and again.complaints[0].sender_stage == 0
    assert dataclasses.replace(again.complaints[0], signature=b"") == _evidence(keys, bundle)
    check_signers(again, domain)
    forged = dataclasses.replace(complaint, signature=_evidence(keys, bundle).signed(keys[2], domain).signature)
    with pytest.raises(BundleError, match="complaints\\[0\\] is signed by"):
        check_signers(dataclasses.replace(stopped, complaints=(forged,)), domain)
    swapped_rows = dataclasses.replace(complaint, rows=b"\x03\x04" * 64)
    with pytest.raises(BundleError, match="rows do not hash to the rows_digest"):
        Bundle.from_json(dataclasses.replace(stopped, complaints=(swapped_rows,)).to_json())
    with pytest.raises(BundleError, match="at most one complaint per receiving stage|at most one per receiving"):
        Bundle.from_json(dataclasses.replace(stopped, complaints=(complaint, complaint)).to_json())
    for chunk, start, count in ((0, 0, 1_500_000), (0, 3, 1), (1, 4, 33), (1, 4, 0), (40, 1252, 1)):
        # the job's prompt is 4 tokens and its budget 80: chunk 0 is [0, 4), chunk k [4 + 32 (k - 1), +32 at most)
        claim = dataclasses.replace(complaint.claim, chunk_index=chunk, start=start, count=count)
        off = dataclasses.replace(complaint, claim=claim)
        with pytest.raises(BundleError, match=f"chunk {chunk} of this job is not positions"):
            Bundle.from_json(dataclasses.replace(stopped, complaints=(off,)).to_json())
    flood = json.loads(stopped.to_json())
    flood["complaints"] *= 17585  # thousands of copies are refused before any is parsed
    with pytest.raises(BundleError, match="17585 complaints; at most one per receiving stage"):
        Bundle.from_dict(flood)


def test_a_receipt_naming_other_inputs_than_its_predecessors_proofs_must_carry_what_it_received(bundle, keys, domain):
    spec, output = bundle.spec, bundle.output_token_ids
    other = tuple(bytes([9]) * 258 for _ in bundle.stages[0].proofs)
    receipt = expected_receipt(spec, 1, output, bundle.stages[1].proofs, received_proofs=other)
    bare = SignedStage(receipt, sign_receipt(keys[1], receipt, domain), bundle.stages[1].proofs)
    lonely = dataclasses.replace(bundle, stages=(bundle.stages[0], bare, bundle.stages[2]))
    with pytest.raises(BundleError, match="stage 1's receipt names handoff proofs other than stage 0's"):
        check_receipts(lonely)
    claims = tuple(
        ReceivedHandoff(claim, claim.sign(keys[0]), b"")
        for i, proof in enumerate(other)
        if (claim := HandoffClaim(spec.job_id, 0, i, 0, 1, "fp32", b"\x00" * 32, proof))
    )
    carried = dataclasses.replace(lonely, stages=(bundle.stages[0], dataclasses.replace(bare, received=claims), bundle.stages[2]))
    check_receipts(carried)
    assert Bundle.from_json(carried.to_json()) == carried  # the claims travel, bound to the receipt's digest
    # Whoever relays the bundle (the equivocating sender itself can fetch every receipt) breaks a signature to
    # turn its equivocation into the receiver's false inputs: the bundle is refused, not judged.
    broken = (dataclasses.replace(claims[0], signature=bytes(1) + claims[0].signature[1:]),) + claims[1:]
    with pytest.raises(BundleError, match="received\\[0\\] is not stage 0's signed claim for chunk 0"):
        check_receipts(dataclasses.replace(carried, stages=(bundle.stages[0], dataclasses.replace(bare, received=broken), bundle.stages[2])))
    shuffled = claims[1:2] + claims[:1] + claims[2:]  # every proof is the same: the digest still matches
    assert proofs_digest(h.claim.proof for h in shuffled) == bare.receipt.inputs_digest
    with pytest.raises(BundleError, match="is not stage 0's signed claim"):
        check_receipts(dataclasses.replace(carried, stages=(bundle.stages[0], dataclasses.replace(bare, received=shuffled), bundle.stages[2])))
    padded = dataclasses.replace(bundle, stages=(bundle.stages[0], dataclasses.replace(bundle.stages[1], received=claims), bundle.stages[2]))
    with pytest.raises(BundleError, match="carries handoff claims although its inputs match"):
        check_receipts(padded)


def _mutate(bundle, path, value):
    data = json.loads(bundle.to_json())
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("version",), 2, "unsupported bundle version 2"),
        (("version",), KeyError, "missing field 'version'"),
        (("surprise",), 1, "unknown field\\(s\\) \\['surprise'\\]"),
        (("stages",), KeyError, "missing field\\(s\\) \\['stages'\\]"),
        (("stages",), "many", "stages must be a list"),
        (("stages", 0, "signature"), "0x1234", "stages\\[0\\].signature must be 65 bytes"),
        (("stages", 1, "signature"), 12, "stages\\[1\\].signature must be a 0x-prefixed hex string"),
        (("stages", 1, "proofs", 0), "0xzz", "stages\\[1\\].proofs\\[0\\] is not valid hex"),
        (("stages", 1, "proofs"), {}, "stages\\[1\\].proofs must be a list"),
        (("stages", 1, "receipt", "stage_index"), 0, "holds the receipt of stage 0"),
        (("stages", 2, "receipt", "token_count"), "40", "token_count must be an integer"),
        (("stages", 2, "receipt", "colour"), "red", "unknown field"),
        (("stages", 2), [], "stages\\[2\\] must be an object"),
        (("output_token_ids",), [1, -2], "output_token_ids must be a list of integers"),
        (("output_token_ids",), [1.5], "output_token_ids must be a list of integers"),
        (("output_token_ids",), list(range(81)), "more than max_new_tokens=80"),
        (("output_token_ids",), [], "at least one output token"),
        (("spec", "seed"), -1, "bundle spec: seed"),
        (("spec", "stages", 0, "worker"), "0x12", "bundle spec: stage worker"),
        (("complaints",), "none", "complaints must be a list"),
    ],
)
def test_malformed_bundles_are_rejected_with_clear_errors(bundle, path, value, message):
    with pytest.raises(BundleError, match=message):
        Bundle.from_json(_mutate(bundle, path, value))


def test_a_missing_stage_without_complaint_is_incomplete(bundle):
    data = json.loads(bundle.to_json())
    data["stages"].pop()
    with pytest.raises(BundleError, match="receipts for 2 of 3 stages and no complaint"):
        Bundle.from_dict(data)
    data["stages"] *= 2
    with pytest.raises(BundleError, match="4 stage entries for a 3-stage job"):
        Bundle.from_dict(data)


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "not valid JSON"),
        ("[1, 2]", "a bundle is a JSON object"),
        ('{"version": 1, "version": 1}', "the key 'version' appears twice"),
        ('{"version": NaN}', "NaN"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply \\(more than 16 levels\\)"),
        (b"\xff\xfe", "not valid JSON"),
        ('{"version": ' + "9" * 5000 + "}", "not valid JSON: Exceeds the limit"),  # was a 500 and a traceback
    ],
)
def test_unparseable_input_is_a_bundle_error(text, message):
    with pytest.raises(BundleError, match=message):
        Bundle.from_json(text)


def test_brackets_inside_strings_do_not_count_as_nesting(keys, domain):
    bundle = make_bundle(keys, domain)
    spec = dataclasses.replace(bundle.spec, group_id="[{" * 30)
    stages = []
    for index, key in enumerate(keys):
        receipt = expected_receipt(spec, index, bundle.output_token_ids, bundle.stages[index].proofs,
                                   received_proofs=bundle.stages[index - 1].proofs if index else ())
        stages.append(SignedStage(receipt, sign_receipt(key, receipt, domain), bundle.stages[index].proofs))
    odd = Bundle(spec, tuple(stages), bundle.output_token_ids)
    assert Bundle.from_json(odd.to_json()) == odd
