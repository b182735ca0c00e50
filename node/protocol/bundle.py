"""The bundle: everything a validator needs to judge one job, in one canonical, versioned JSON document.

bundle = job spec + for every stage (its signed receipt and the proofs it committed to) + the output
tokens + any signed handoff complaints (PROTOCOL I2). Any stage may submit it; the job id is the
idempotency key (I3), so submitting the same bundle twice is one ledger record.

A bundle arrives from the network, so `Bundle.from_json` treats it as hostile: unknown fields, missing
fields, wrong types, duplicate keys, NaN, oversized values and stages out of order all raise `BundleError`
with a message naming the place. Checking that it is *true* is separate and cheap to call in order:
`check_receipts` (every receipt is exactly what the spec, output and proofs imply), `recover_signers` and
`check_signers` (every receipt and complaint is signed by the worker the spec assigns).

Wire form (version 1; bytes are 0x-hex):
    {"version": 1, "spec": {JobSpec.to_dict()},
     "stages": [{"receipt": {StageReceipt.to_json()}, "signature": "0x…65 bytes", "proofs": ["0x…", …],
                 "received": [{ReceivedHandoff.to_json(with_rows=False)}, …] (only when its inputs differ)}, …],
     "output_token_ids": [int, …],
     "complaints": [{Complaint.to_json()}, …]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ledger import json_input
from ledger.errors import InvalidInput
from ledger.json_input import JsonInputError
from node.protocol.complaints import Complaint
from node.protocol.handoff import (
    DTYPE_CODES,
    DTYPE_SIZES,
    HandoffClaim,
    ReceivedHandoff,
    handoff_from_json,
    rows_digest,
)
from node.protocol.job import JobSpec, JobSpecError
from node.protocol.receipts import (
    ReceiptDomain,
    ReceiptError,
    StageReceipt,
    expected_receipt,
    parse_hex,
    proofs_digest,
)
from node.protocol.signing import SIGNATURE_LENGTH, SignatureError, recover_digest

BUNDLE_VERSION = 1
MAX_STAGES = 256
MAX_PROOF_BYTES = 4096
MAX_PROOFS_PER_STAGE = 4 + (1 << 16) // 32  # the prefill proof + one per 32 decode rows of the longest job
MAX_EVIDENCE_BYTES = 3 << 20  # a complaint's rows: 6 MiB of hex, inside the validator's 8 MiB body limit
DECODE_CHUNK = 32  # decode rows per proof (INTERFACES.md, proof schedule)

class BundleError(InvalidInput):
    """A bundle that is malformed, inconsistent with its spec, or not signed by the assigned workers."""


@dataclass(frozen=True)
class SignedStage:
    """One stage's part of a bundle: its receipt, the signature over it, and the proofs the receipt digests.

    `received` (a receiving stage's handoff claims, chunk by chunk, without the rows) travels only when the
    receipt's `inputs_digest` is not the digest of the previous stage's proofs: then it is the evidence of
    which of the two lied (node/validator/handoff_faults.py)."""

    receipt: StageReceipt
    signature: bytes
    proofs: tuple[bytes, ...]
    received: tuple[ReceivedHandoff, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = {
            "receipt": self.receipt.to_json(),
            "signature": "0x" + self.signature.hex(),
            "proofs": ["0x" + proof.hex() for proof in self.proofs],
        }
        if self.received:
            data["received"] = [handoff.to_json(with_rows=False) for handoff in self.received]
        return data


_HEX = Annotated[str, Field(pattern=r"^0x([0-9a-fA-F]{2})*$")]


class StageEntryBody(BaseModel):
    """One stage's entry: its signed receipt (node/protocol/receipts.py `StageReceipt.to_json`), the signature
    and the proofs the receipt digests, and the handoff claims it received when its inputs differ."""

    model_config = ConfigDict(extra="forbid")
    receipt: dict[str, Any]
    signature: Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{130}$")]
    proofs: Annotated[list[_HEX], Field(max_length=MAX_PROOFS_PER_STAGE)]
    received: list[dict[str, Any]] = []


# The wire form, as /openapi.json shows it. `Bundle.from_json` checks it field by field instead of through
# this model: intake parses every bundle (>= 500/s) and names each defect in its own words (tests hold
# those words); the spec inside is validated by `JobSpec`, the one declaration of its rules.
class BundleBody(BaseModel):
    """A job spec, every stage's signed receipt and proofs, and the output tokens (`Bundle.to_json`).
    Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", title="Bundle")
    version: Literal[1]
    spec: JobSpec
    stages: Annotated[list[StageEntryBody], Field(max_length=MAX_STAGES)]
    output_token_ids: list[Annotated[int, Field(ge=0, lt=1 << 32)]]
    complaints: list[dict[str, Any]] = []


@dataclass(frozen=True)
class Bundle:
    spec: JobSpec
    stages: tuple[SignedStage, ...]
    output_token_ids: tuple[int, ...]
    complaints: tuple[Complaint, ...] = ()

    @cached_property
    def job_id(self) -> bytes:
        return self.spec.job_id

    @property
    def job_id_hex(self) -> str:
        return "0x" + self.job_id.hex()

    @property
    def complete(self) -> bool:
        """Every stage signed and nobody complained: a bundle the validator can reward."""
        return len(self.stages) == len(self.spec.stages) and not self.complaints

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": BUNDLE_VERSION,
            "spec": self.spec.to_dict(),
            "stages": [stage.to_json() for stage in self.stages],
            "output_token_ids": list(self.output_token_ids),
            "complaints": [complaint.to_json() for complaint in self.complaints],
        }

    def to_json(self) -> str:
        """Canonical: compact, sorted keys, so equal bundles are equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "Bundle":
        """Parse an untrusted JSON document; any defect raises BundleError naming where it is."""
        try:  # its size was bounded by whoever read it (the API's body limit)
            data = json_input.loads(text, max_depth=MAX_JSON_DEPTH, max_bytes=len(text), unique_keys=True)
        except JsonInputError as error:  # also an integer of more digits than Python converts
            if str(error).startswith("nested"):
                raise BundleError(f"bundle JSON is nested too deeply (more than {MAX_JSON_DEPTH} levels)") from None
            raise BundleError(f"bundle is not valid JSON: {error}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> "Bundle":
        if not isinstance(data, dict):
            raise BundleError("a bundle is a JSON object")
        if "version" not in data:
            raise BundleError("bundle: missing field 'version'")
        if data["version"] != BUNDLE_VERSION:
            raise BundleError(f"unsupported bundle version {data['version']!r} (this node reads {BUNDLE_VERSION})")
        _check_keys("bundle", data, {"version", "spec", "stages", "output_token_ids", "complaints"}, optional={"complaints"})
        try:
            spec = JobSpec.from_dict(data["spec"])
        except (JobSpecError, TypeError) as error:
            raise BundleError(f"bundle spec: {error}") from None
        if len(spec.stages) > MAX_STAGES:
            raise BundleError(f"bundle spec has {len(spec.stages)} stages, at most {MAX_STAGES}")

        raw_stages = data["stages"]
        if not isinstance(raw_stages, list):
            raise BundleError("bundle stages must be a list")
        if len(raw_stages) > len(spec.stages):
            raise BundleError(f"bundle has {len(raw_stages)} stage entries for a {len(spec.stages)}-stage job")
        stages = tuple(_parse_stage(index, raw) for index, raw in enumerate(raw_stages))

        output = data["output_token_ids"]
        if not (isinstance(output, list) and _all_uint32(output)):
            raise BundleError("bundle output_token_ids must be a list of integers in [0, 2**32)")
        if len(output) > spec.sampling.max_new_tokens:
            raise BundleError(
                f"bundle has {len(output)} output tokens, more than max_new_tokens={spec.sampling.max_new_tokens}"
            )

        raw_complaints = data.get("complaints", [])
        if not isinstance(raw_complaints, list):
            raise BundleError("bundle complaints must be a list")
        if len(raw_complaints) > len(spec.stages) - 1:
            raise BundleError(f"bundle has {len(raw_complaints)} complaints; at most one per receiving stage")
        complaints = tuple(_parse_complaint(index, raw, spec) for index, raw in enumerate(raw_complaints))
        complainers = [complaint.complainer_stage for complaint in complaints]
        if len(set(complainers)) != len(complainers):
            raise BundleError("bundle complaints: at most one complaint per receiving stage")
        if not complaints:
            if len(stages) != len(spec.stages):
                raise BundleError(
                    f"bundle has receipts for {len(stages)} of {len(spec.stages)} stages and no complaint"
                )
            if not output:
                raise BundleError("a complete bundle has at least one output token")
        return cls(spec, stages, tuple(output), complaints)


def _parse_stage(index: int, raw: Any) -> SignedStage:
    where = f"stages[{index}]"
    if not isinstance(raw, dict):
        raise BundleError(f"bundle {where} must be an object")
    _check_keys(f"bundle {where}", raw, {"receipt", "signature", "proofs", "received"}, optional={"received"})
    try:
        receipt = StageReceipt.from_json(raw["receipt"])
        signature = parse_hex(raw["signature"], f"{where}.signature", length=SIGNATURE_LENGTH)
        proofs_raw = raw["proofs"]
        if not isinstance(proofs_raw, list):
            raise BundleError(f"bundle {where}.proofs must be a list")
        if len(proofs_raw) > MAX_PROOFS_PER_STAGE:
            raise BundleError(f"bundle {where} has {len(proofs_raw)} proofs, at most {MAX_PROOFS_PER_STAGE}")
        proofs = tuple(
            parse_hex(proof, f"{where}.proofs[{i}]", max_length=MAX_PROOF_BYTES) for i, proof in enumerate(proofs_raw)
        )
    except (ReceiptError, TypeError) as error:
        raise BundleError(f"bundle {where}: {error}") from None
    if receipt.stage_index != index:
        raise BundleError(f"bundle {where} holds the receipt of stage {receipt.stage_index}; stages must be in order")
    return SignedStage(receipt, signature, proofs, _parse_received(where, raw.get("received", []), receipt))


def parse_stage(raw: Any) -> SignedStage:
    """One stage entry from a peer (the shape it has in a bundle), at whatever index its receipt names."""
    if not isinstance(raw, dict) or not isinstance(raw.get("receipt"), dict):
        raise BundleError("a stage entry is an object with a receipt, a signature and proofs")
    index = raw["receipt"].get("stage_index")
    if not _is_uint32(index):
        raise BundleError("a stage entry's receipt names no stage index")
    return _parse_stage(index, raw)


def _parse_received(where: str, raw: Any, receipt: StageReceipt) -> tuple[ReceivedHandoff, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_PROOFS_PER_STAGE or receipt.stage_index == 0 and raw:
        raise BundleError(f"bundle {where}.received must be a list of at most {MAX_PROOFS_PER_STAGE} handoff claims"
                          " (none on stage 0)")
    received = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise BundleError(f"bundle {where}.received[{i}] must be an object")
        _check_keys(f"bundle {where}.received[{i}]", item,
                    {"chunk", "start", "count", "dtype", "rows_digest", "proof", "signature"})
        if not (isinstance(item["proof"], str) and len(item["proof"]) <= 2 + 2 * MAX_PROOF_BYTES
                and isinstance(item["signature"], str) and len(item["signature"]) == 2 + 2 * SIGNATURE_LENGTH):
            raise BundleError(f"bundle {where}.received[{i}]: proof or signature of the wrong size")
        try:
            received.append(handoff_from_json("0x" + receipt.job_id.hex(), receipt.stage_index - 1, item))
        except (KeyError, TypeError, ValueError) as error:
            raise BundleError(f"bundle {where}.received[{i}]: {error}") from None
    return tuple(received)


_COMPLAINT_FIELDS = {"job_id", "complainer_stage", "sender_stage", "chunk_index", "start", "count", "dtype",
                     "rows_digest", "claimed_proof", "sender_signature", "rows", "signature"}


def _parse_complaint(index: int, raw: Any, spec: JobSpec) -> Complaint:
    where = f"complaints[{index}]"
    if not isinstance(raw, dict):
        raise BundleError(f"bundle {where} must be an object")
    _check_keys(f"bundle {where}", raw, _COMPLAINT_FIELDS)
    try:
        job_id = parse_hex(raw["job_id"], f"{where}.job_id", length=32)
        digest = parse_hex(raw["rows_digest"], f"{where}.rows_digest", length=32)
        proof = parse_hex(raw["claimed_proof"], f"{where}.claimed_proof", max_length=MAX_PROOF_BYTES)
        sender_signature = parse_hex(raw["sender_signature"], f"{where}.sender_signature", length=SIGNATURE_LENGTH)
        rows = parse_hex(raw["rows"], f"{where}.rows", max_length=MAX_EVIDENCE_BYTES)
        signature = parse_hex(raw["signature"], f"{where}.signature", length=SIGNATURE_LENGTH)
    except ReceiptError as error:
        raise BundleError(f"bundle {error}") from None
    numbers = {}
    for name in ("complainer_stage", "sender_stage", "chunk_index", "start", "count"):
        if not _is_uint32(raw[name]):
            raise BundleError(f"bundle {where}.{name} must be an integer in [0, 2**32)")
        numbers[name] = raw[name]
    if raw["dtype"] not in DTYPE_CODES:
        raise BundleError(f"bundle {where}.dtype must be one of {sorted(DTYPE_CODES)}")
    if not 1 <= numbers["complainer_stage"] < len(spec.stages):
        raise BundleError(f"bundle {where}.complainer_stage {numbers['complainer_stage']} is not a receiving stage")
    if numbers["sender_stage"] != numbers["complainer_stage"] - 1:
        raise BundleError(f"bundle {where}: a stage can only complain about the stage just before it")
    if job_id != spec.job_id:
        raise BundleError(f"bundle {where}.job_id is not this bundle's job")
    prompt, chunk, count = len(spec.prompt_token_ids), numbers["chunk_index"], numbers["count"]
    span = (0, prompt) if chunk == 0 else (prompt + DECODE_CHUNK * (chunk - 1), count)
    decode_ok = chunk == 0 or 0 < count <= DECODE_CHUNK  # the last chunk of a job may be shorter
    if (numbers["start"], count) != span or not decode_ok or span[0] + count > prompt + spec.sampling.max_new_tokens:
        raise BundleError(f"bundle {where}: chunk {chunk} of this job is not positions "
                          f"[{numbers['start']}, {numbers['start'] + numbers['count']})")
    if len(rows) % (numbers["count"] * DTYPE_SIZES[raw["dtype"]]):
        raise BundleError(f"bundle {where}.rows are not {numbers['count']} rows of {raw['dtype']}")
    if rows_digest(rows) != digest:
        raise BundleError(f"bundle {where}.rows do not hash to the rows_digest the complaint names")
    claim = HandoffClaim(job_id, numbers["sender_stage"], numbers["chunk_index"], numbers["start"], numbers["count"],
                         raw["dtype"], digest, proof)
    return Complaint(numbers["complainer_stage"], claim, sender_signature, rows, signature)


def expected_proof_count(output_token_count: int) -> int:
    """One proof for the prefill block, then one per 32 decode rows (the last sampled token is not fed back)."""
    decode_rows = max(output_token_count - 1, 0)
    return 1 + -(-decode_rows // DECODE_CHUNK)


def check_receipts(bundle: Bundle) -> None:
    """Every receipt is exactly the one the spec, the output tokens and the stage's proofs imply.

    Raises BundleError naming the stage and the fields that differ (job id, group, stage index, layer range,
    model id, proofs and tokens digests, token count, work units). Only complete bundles are checked for the
    number of proofs: a job stopped by a complaint ends early.
    """
    for index, stage in enumerate(bundle.stages):
        expected = expected_receipt(bundle.spec, index, bundle.output_token_ids, stage.proofs, job_id=bundle.job_id,
                                    inputs_digest=stage.receipt.inputs_digest)
        if stage.receipt != expected:
            differing = [f.name for f in fields(StageReceipt) if getattr(stage.receipt, f.name) != getattr(expected, f.name)]
            raise BundleError(f"stage {index} receipt does not match the job: {', '.join(differing)} differ")
        if bundle.complete and len(stage.proofs) != expected_proof_count(len(bundle.output_token_ids)):
            raise BundleError(
                f"stage {index} has {len(stage.proofs)} proofs; {len(bundle.output_token_ids)} output tokens "
                f"need {expected_proof_count(len(bundle.output_token_ids))}"
            )
        if index > 0:
            _check_received(bundle, index)


def _check_received(bundle: Bundle, index: int) -> None:
    """A receipt naming other inputs than the previous stage's proofs must carry the claims it received, bound
    to its inputs digest through their proofs, each the sender's signed claim at its position. Without them,
    or with one altered, the bundle is refused, not judged: whoever assembles or relays it can delay a
    verdict but not turn the sender's equivocation into the receiver's fault."""
    stage = bundle.stages[index]
    # the previous receipt's digest of its proofs was checked against them just before (check_receipts)
    consistent = stage.receipt.inputs_digest == bundle.stages[index - 1].receipt.proofs_digest
    if consistent:
        if stage.received:
            raise BundleError(f"stage {index} carries handoff claims although its inputs match stage {index - 1}'s proofs")
        return
    if proofs_digest(handoff.claim.proof for handoff in stage.received) != stage.receipt.inputs_digest:
        raise BundleError(
            f"stage {index}'s receipt names handoff proofs other than stage {index - 1}'s and its entry does not "
            "carry the claims it received"
        )
    sender = bundle.spec.stages[index - 1].worker
    for position, handoff in enumerate(stage.received):  # only the claims the receiver accepted, as signed
        if handoff.claim.chunk_index != position or not handoff.claim.signed_by(handoff.signature, sender):
            raise BundleError(
                f"stage {index}.received[{position}] is not stage {index - 1}'s signed claim for chunk {position}"
            )


def recover_signers(bundle: Bundle, domain: ReceiptDomain) -> tuple[str, ...]:
    """The address that signed each stage's receipt, in stage order (BundleError if one does not recover)."""
    signers = []
    for index, stage in enumerate(bundle.stages):
        try:
            signers.append(recover_digest(stage.receipt.digest(domain), stage.signature))
        except SignatureError as error:
            raise BundleError(f"stage {index} signature: {error}") from None
    return tuple(signers)


def check_signers(bundle: Bundle, domain: ReceiptDomain) -> tuple[str, ...]:
    """Every receipt and every complaint is signed, for this domain, by the worker the spec assigns to that
    stage (I3); returns the receipt signers. Stake is the validator's to check."""
    signers = recover_signers(bundle, domain)
    for index, signer in enumerate(signers):
        assigned = bundle.spec.stages[index].worker
        if signer != assigned:
            raise BundleError(f"stage {index} receipt is signed by {signer}, not by its assigned worker {assigned}")
    for index, complaint in enumerate(bundle.complaints):
        try:
            signer = recover_digest(complaint.digest(domain), complaint.signature)
        except SignatureError as error:
            raise BundleError(f"complaints[{index}] signature: {error}") from None
        stage = complaint.complainer_stage
        assigned = bundle.spec.stages[stage].worker
        if signer != assigned:
            raise BundleError(f"complaints[{index}] is signed by {signer}, not by stage {stage}'s worker {assigned}")
    return signers


def verify_bundle(bundle: Bundle, domain: ReceiptDomain) -> tuple[str, ...]:
    """`check_receipts` then `check_signers`: the bundle says what its spec says and the right keys signed it."""
    check_receipts(bundle)
    return check_signers(bundle, domain)


def _check_keys(where: str, data: dict, allowed: set[str], optional: set[str] = frozenset()) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise BundleError(f"{where}: unknown field(s) {sorted(unknown)}")
    missing = allowed - set(optional) - set(data)
    if missing:
        raise BundleError(f"{where}: missing field(s) {sorted(missing)}")


def _all_uint32(values: list) -> bool:
    """Every value an int (not a bool) in [0, 2**32): a type scan, then min and max, at C speed."""
    return not values or (set(map(type, values)) == {int} and min(values) >= 0 and max(values) < 2**32)


def _is_uint32(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32


# Importing eth-account (py_ecc) raises Python's recursion limit to 100000, deep enough for json's C scanner
# to overflow the C stack and kill the process on "[[[[…". A bundle is 5 levels deep; refuse depth first.
MAX_JSON_DEPTH = 16


