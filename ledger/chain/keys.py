"""Keys that sign chain transactions, and the well-known dev keys of eth-tester's genesis."""

from __future__ import annotations

from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

# A key that signs transactions: an eth-account LocalAccount, or any key object holding its 32-byte private key
# as `secret` (node's SigningKey), so the ledger needs nothing from the node to be handed one.
Signer = Any


def as_account(key: Signer) -> LocalAccount:
    """An eth-account signer for a key holding its `secret` (or an account passed through)."""
    if isinstance(key, LocalAccount):
        return key
    secret = getattr(key, "secret", None)
    if not isinstance(secret, bytes) or len(secret) != 32:
        raise TypeError(f"not a signing key: {type(key).__name__}")
    return Account.from_key(secret)


def tester_keys(count: int = 10) -> list[LocalAccount]:
    """The prefunded accounts of eth-tester's genesis (private keys 1..count, 1,000,000 ether each)."""
    return [Account.from_key(i.to_bytes(32, "big")) for i in range(1, count + 1)]
