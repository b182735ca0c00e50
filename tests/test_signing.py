import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from node.protocol.signing import SignatureError, SigningKey, recover_digest, recover_message


def test_message_signature_matches_eth_account():
    key = SigningKey(bytes(range(1, 33)))
    message = b"hello stage 1"
    ours = key.sign_message(message)
    theirs = Account.sign_message(encode_defunct(message), private_key=key.secret).signature
    assert ours == bytes(theirs)
    assert recover_message(message, ours) == key.address == Account.from_key(key.secret).address


def test_tampered_message_recovers_someone_else():
    key = SigningKey.generate()
    signature = key.sign_message(b"reward 10")
    assert recover_message(b"reward 11", signature) != key.address


def test_malformed_signature_is_a_clear_error():
    with pytest.raises(SignatureError):
        recover_digest(b"\x00" * 32, b"\x01" * 10)
    with pytest.raises(SignatureError):
        recover_digest(b"\x00" * 32, b"\x01" * 64 + b"\x05")


def test_repr_hides_the_secret():
    key = SigningKey(bytes(range(1, 33)))
    assert key.secret.hex() not in repr(key)


def test_the_high_s_twin_of_a_signature_is_refused():
    """(r, n - s) with the other recovery id recovers the same signer: anyone could mint a second valid
    signature for anything a key signed, and every check keyed on signature bytes would count it twice."""
    from node.protocol.signing import SECP256K1_N, SignatureError, SigningKey, recover_digest

    key = SigningKey.generate()
    digest = bytes(range(32))
    signature = key.sign_digest(digest)
    s = int.from_bytes(signature[32:64], "big")
    twin = signature[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - signature[64]])  # 27 <-> 28
    assert recover_digest(digest, signature) == key.address
    with pytest.raises(SignatureError, match="high-s"):
        recover_digest(digest, twin)
    with pytest.raises(SignatureError):
        recover_digest(digest, bytes(64) + bytes([27]))
