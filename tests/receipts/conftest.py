"""A signed 3-stage bundle, built the way workers build it, for receipt and bundle tests."""

import hashlib

import pytest

from node.protocol.bundle import Bundle, SignedStage, expected_proof_count
from node.protocol.job import JobSpec, SamplingParams, StageAssignment
from node.protocol.receipts import ReceiptDomain, expected_receipt, sign_receipt
from node.protocol.signing import SigningKey

CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def make_keys(count: int) -> list[SigningKey]:
    return [SigningKey(hashlib.sha256(f"stage-key-{i}".encode()).digest()) for i in range(count)]


def make_spec(keys: list[SigningKey], layers: int = 12) -> JobSpec:
    per = layers // len(keys)
    return JobSpec(
        model_id="0x" + "ab" * 32,
        prompt_token_ids=(1, 17, 256, 4000),
        sampling=SamplingParams(temperature=0.7, top_p=0.9, top_k=40, max_new_tokens=80),
        seed=1234,
        group_id="group-7",
        stages=tuple(StageAssignment(k.address, i * per, (i + 1) * per) for i, k in enumerate(keys)),
    )


def fake_proofs(stage: int, count: int) -> tuple[bytes, ...]:
    return tuple(hashlib.sha256(f"{stage}/{i}".encode()).digest() * 8 + bytes(2) for i in range(count))


def make_bundle(keys, domain, output=tuple(range(100, 140))) -> Bundle:
    spec = make_spec(keys)
    stages = []
    for index, key in enumerate(keys):
        proofs = fake_proofs(index, expected_proof_count(len(output)))
        receipt = expected_receipt(spec, index, output, proofs, received_proofs=stages[-1].proofs if stages else ())
        stages.append(SignedStage(receipt, sign_receipt(key, receipt, domain), proofs))
    return Bundle(spec, tuple(stages), tuple(output))


@pytest.fixture
def domain() -> ReceiptDomain:
    return ReceiptDomain(chain_id=31337, verifying_contract=CONTRACT)


@pytest.fixture
def keys() -> list[SigningKey]:
    return make_keys(3)


@pytest.fixture
def bundle(keys, domain) -> Bundle:
    return make_bundle(keys, domain)
