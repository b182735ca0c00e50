"""EIP-712 stage receipts: the digest wallets compute, sign/recover, and what breaks a signature."""

import dataclasses

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from node.protocol.receipts import (
    EIP712_TYPES,
    ZERO_DIGEST,
    ReceiptDomain,
    ReceiptError,
    StageReceipt,
    expected_receipt,
    proofs_digest,
    recover_receipt_signer,
    sign_receipt,
    tokens_digest,
)
from node.protocol.signing import SigningKey

from .conftest import CONTRACT, fake_proofs, make_spec


def a_receipt(key_address: str = "0x" + "11" * 20) -> StageReceipt:
    return StageReceipt(
        job_id=bytes(range(32)),
        group_id="group-7",
        stage_index=1,
        layer_start=4,
        layer_end=8,
        model_id=b"\xab" * 32,
        proofs_digest=b"\x01" * 32,
        tokens_digest=ZERO_DIGEST,
        inputs_digest=b"\x02" * 32,
        token_count=43,
        work_units=172,
    )


def test_digest_matches_eth_account_typed_data(domain):
    receipt = a_receipt()
    typed = encode_typed_data(
        full_message={
            "types": EIP712_TYPES,
            "primaryType": "StageReceipt",
            "domain": domain.to_eip712(),
            "message": receipt.to_eip712_message(),
        }
    )
    key = SigningKey(bytes(range(1, 33)))
    theirs = Account.sign_message(typed, private_key=key.secret)
    assert bytes(theirs.message_hash) == receipt.digest(domain)
    assert bytes(theirs.signature) == sign_receipt(key, receipt, domain)


def test_sign_and_recover_round_trip(domain):
    for seed in range(5):
        key = SigningKey.generate()
        receipt = dataclasses.replace(a_receipt(), stage_index=seed)
        assert recover_receipt_signer(receipt, sign_receipt(key, receipt, domain), domain) == key.address


CHANGES = {
    "job_id": bytes(31) + b"\x01",
    "group_id": "group-8",
    "stage_index": 2,
    "layer_start": 3,
    "layer_end": 9,
    "model_id": b"\xac" * 32,
    "proofs_digest": b"\x02" * 32,
    "tokens_digest": b"\x03" * 32,
    "inputs_digest": b"\x04" * 32,
    "token_count": 44,
    "work_units": 173,
    "precision": "bf16",
}


def test_every_field_is_covered_by_the_test():
    assert set(CHANGES) == {f.name for f in dataclasses.fields(StageReceipt)}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_changing_any_field_breaks_recovery(domain, field):
    key = SigningKey.generate()
    receipt = a_receipt()
    signature = sign_receipt(key, receipt, domain)
    tampered = dataclasses.replace(receipt, **{field: CHANGES[field]})
    assert recover_receipt_signer(tampered, signature, domain) != key.address


@pytest.mark.parametrize(
    "other",
    [
        ReceiptDomain(chain_id=1, verifying_contract=CONTRACT),
        ReceiptDomain(chain_id=31337, verifying_contract="0x" + "22" * 20),
        ReceiptDomain(chain_id=31337, verifying_contract=CONTRACT, version="2"),
    ],
)
def test_receipt_for_another_chain_or_contract_does_not_verify(domain, other):
    key = SigningKey.generate()
    receipt = a_receipt()
    signature = sign_receipt(key, receipt, other)
    assert recover_receipt_signer(receipt, signature, other) == key.address
    assert recover_receipt_signer(receipt, signature, domain) != key.address


def test_receipt_json_round_trip():
    receipt = a_receipt()
    assert StageReceipt.from_json(receipt.to_json()) == receipt


@pytest.mark.parametrize(
    "change, message",
    [
        ({"job_id": "0x1234"}, "job_id must be 32 bytes"),
        ({"job_id": "ab" * 32}, "0x-prefixed"),
        ({"stage_index": -1}, "stage_index"),
        ({"token_count": True}, "token_count"),
        ({"work_units": 2**64}, "work_units"),
        ({"layer_end": 4}, "layer range"),
        ({"group_id": ""}, "group_id"),
        ({"extra": 1}, "unknown field"),
        ({"precision": "int8"}, "precision"),
    ],
)
def test_malformed_receipt_json_is_rejected(change, message):
    data = {**a_receipt().to_json(), **change}
    with pytest.raises(ReceiptError, match=message):
        StageReceipt.from_json(data)


def test_digests_of_tokens_and_proofs():
    from eth_hash.auto import keccak

    assert tokens_digest([1, 258]) == keccak(b"\x00\x00\x00\x01\x00\x00\x01\x02")
    assert proofs_digest([b"ab", b"c"]) == keccak(b"abc")
    with pytest.raises(ReceiptError):
        tokens_digest([2**32])


def test_expected_receipt_binds_the_right_tokens(keys):
    spec = make_spec(keys)
    output = (7, 8, 9)
    first, middle, last = (expected_receipt(spec, i, output, fake_proofs(i, 1), received_proofs=()) for i in range(3))
    assert first.tokens_digest == tokens_digest(spec.prompt_token_ids)
    assert middle.tokens_digest == ZERO_DIGEST
    assert last.tokens_digest == tokens_digest(output)
    # Every stage processed the 4 prompt positions and 2 fed-back tokens.
    assert first.token_count == middle.token_count == last.token_count == 6
    assert middle.work_units == 4 * 6
    assert middle.job_id == spec.job_id and middle.layer_start == 4 and middle.layer_end == 8


def test_domain_rejects_bad_values():
    with pytest.raises(ReceiptError):
        ReceiptDomain(chain_id=0, verifying_contract=CONTRACT)
    with pytest.raises(ReceiptError):
        ReceiptDomain(chain_id=1, verifying_contract="0x1234")


def test_fast_address_derivation_matches_eth_utils():
    import coincurve
    from eth_hash.auto import keccak as reference_keccak
    from eth_utils import to_checksum_address

    from node.protocol.signing import address_of_public_key, keccak256

    for _ in range(50):
        public_key = coincurve.PrivateKey().public_key
        expected = to_checksum_address(reference_keccak(public_key.format(compressed=False)[1:])[-20:])
        assert address_of_public_key(public_key) == expected
    assert keccak256(b"stagewise") == reference_keccak(b"stagewise")


def test_a_receipt_signs_the_precision_its_job_declares():
    from .conftest import make_keys, make_spec

    spec = make_spec(make_keys(3))
    output = tuple(range(100, 110))
    assert expected_receipt(spec, 0, output, fake_proofs(0, 1)).precision == "fp32"
    bf16 = dataclasses.replace(spec, precision="bf16")
    assert expected_receipt(bf16, 0, output, fake_proofs(0, 1)).precision == "bf16"
