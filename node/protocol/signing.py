"""secp256k1 signatures over 32-byte digests, the way Ethereum does them.

Everything that a node signs (receipts, handoff proofs, hellos, registrations, complaints) goes through
these functions, so there is one place that knows the signature layout: 65 bytes `r || s || v`, with
`v` in {27, 28}. coincurve does the curve work: recovering a signer is about 40 times faster than the pure
Python path of eth-keys, and a validator recovers every stage's signature of every bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import coincurve
from eth_hash.auto import keccak

from ledger.errors import InvalidInput

SIGNATURE_LENGTH = 65

try:  # safe-pysha3's C keccak: same digests, ~7x less overhead per call than eth-hash's pycryptodome backend
    from sha3 import keccak_256 as _keccak_256

    def keccak256(data: bytes) -> bytes:
        return _keccak_256(data).digest()

except ImportError:  # pragma: no cover - slower, not different
    keccak256 = keccak


class SignatureError(InvalidInput):
    """A signature that is malformed or does not recover to a public key."""


def address_of_public_key(public_key: coincurve.PublicKey) -> str:
    """The checksummed Ethereum address of a public key: the last 20 bytes of keccak(x || y).

    EIP-55 by hand (eth_utils.to_checksum_address validates and re-encodes, and costs more than the curve
    recovery itself); a test checks it against eth_utils."""
    return _address_of_point(public_key.format(compressed=False)[1:])


@lru_cache(maxsize=4096)
def _address_of_point(point: bytes) -> str:
    """Cached: the same workers sign receipt after receipt, and intake recovers three per bundle."""
    lower = keccak256(point)[-20:].hex()
    nibbles = keccak256(lower.encode()).hex()
    return "0x" + "".join(c.upper() if n >= "8" else c for c, n in zip(lower, nibbles))


@dataclass(frozen=True, repr=False)
class SigningKey:
    """A private key held in memory. Its repr never shows the secret, so logging one is harmless."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise ValueError("a private key is 32 bytes")

    @classmethod
    def from_hex(cls, value: str) -> "SigningKey":
        return cls(bytes.fromhex(value.removeprefix("0x")))

    @classmethod
    def generate(cls) -> "SigningKey":
        return cls(coincurve.PrivateKey().secret)

    @property
    def address(self) -> str:
        return address_of_public_key(coincurve.PrivateKey(self.secret).public_key)

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign a 32-byte digest; returns `r || s || v` with v in {27, 28}."""
        if len(digest) != 32:
            raise ValueError("sign a 32-byte digest")
        rsv = coincurve.PrivateKey(self.secret).sign_recoverable(digest, hasher=None)
        return rsv[:64] + bytes([rsv[64] + 27])

    def sign_message(self, message: bytes) -> bytes:
        """Sign `message` under the EIP-191 personal-message prefix (what wallets show as a message)."""
        return self.sign_digest(message_digest(message))

    def __repr__(self) -> str:
        return f"SigningKey(address={self.address})"


def message_digest(message: bytes) -> bytes:
    """EIP-191 version 0x45: keccak256("\\x19Ethereum Signed Message:\\n" + len(message) + message)."""
    return keccak(b"\x19Ethereum Signed Message:\n" + str(len(message)).encode() + message)


SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def recover_digest(digest: bytes, signature: bytes) -> str:
    """The checksummed address that signed `digest`; raises SignatureError when it cannot be recovered."""
    if len(digest) != 32:
        raise SignatureError("a digest is 32 bytes")
    if len(signature) != SIGNATURE_LENGTH:
        raise SignatureError(f"a signature is {SIGNATURE_LENGTH} bytes, got {len(signature)}")
    v = signature[64]
    if v in (27, 28):
        v -= 27
    if v not in (0, 1):
        raise SignatureError(f"bad recovery id {signature[64]}")
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big")
    if not (0 < r < SECP256K1_N and 0 < s <= SECP256K1_N // 2):
        # (r, n - s) with the other recovery id is the same signer's signature too: accepting both would let
        # anyone mint a second valid signature for what a key signed once (EIP-2; the contract refuses it too)
        raise SignatureError("signature s is not in the lower half of the curve order (malleable high-s form)")
    try:
        public_key = coincurve.PublicKey.from_signature_and_message(signature[:64] + bytes([v]), digest, hasher=None)
    except Exception as error:  # coincurve raises plain Exception on invalid points
        raise SignatureError(f"signature does not recover: {error}") from error
    return address_of_public_key(public_key)


def recover_message(message: bytes, signature: bytes) -> str:
    """The address that signed `message` with `SigningKey.sign_message`."""
    return recover_digest(message_digest(message), signature)
