"""How a validator node is set up: one frozen value built from flags and environment variables."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from node.validator.spot_check import check_secret
from node.validator.verdict import Tariff

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
SLASHES_AT_STAKE = 3  # the default minimum stake: a worker can pay this many slashes in full (docs/validator.md)


@dataclass(frozen=True)
class ValidatorConfig:
    model_dirs: tuple[Path, ...] = ()
    """Models this validator can replay; a bundle for any other model_id is refused at intake."""
    sample_rate: float = 1.0
    """Fraction of jobs replayed; the rest are accepted unreplayed (see docs/validator.md)."""
    sample_secret: bytes = b""
    """Keeps the choice of replayed jobs unpredictable to workers while deterministic for this node: at least
    16 bytes whenever 0 < sample_rate < 1 (spot_check.sample_secret makes one and keeps it in the ledger)."""
    epoch_seconds: float = 60.0
    epoch_entries: int = 1000
    admin_token: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    tariff: Tariff = field(default_factory=Tariff)
    min_stake_wei: int | None = None
    """A receipt signer, and every worker a job is issued to, needs at least this much stake (I3). At least
    one slash, so that a slash takes its full amount; by default SLASHES_AT_STAKE of them (docs/validator.md)."""
    bundle_deadline_seconds: float = 600.0
    """A job registered by the orchestrator without a complete bundle by then is soft-invalidated."""
    claim_lease_seconds: float = 120.0
    """A claimed job whose validator has not finished by then (it crashed) is taken again."""
    validator_id: str = "validator"
    peers: tuple[str, ...] = ()
    """Other validators of the contract's set (their API URLs): asked to co-sign this node's slash and anchor
    orders, and the only places this node fetches evidence and epoch entries from when it co-signs (I7)."""
    public_url: str | None = None
    """This node's API URL as its peers know it (one of their --peer URLs): where they fetch what they judge."""
    audit_rate: float = 0.1
    """Fraction of a peer's rewarded jobs this node replays before co-signing that peer's anchor."""
    audit_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    """This node's own secret behind the audit draw, so a proposer cannot tell which jobs will be replayed
    (made at random per process unless given)."""
    cosign_only: bool = False
    """Judge and co-sign peers' orders only: no validation, epochs or chain transactions of its own."""
    proposer_grace_seconds: float = 120.0
    """Epochs are proposed in turn by the contract's validators (node/validator/rotation.py); once the chain has
    sat at an epoch this long without the next, any validator may propose it (its proposer is down, has
    nothing to anchor, or only co-signs)."""
    order_ttl_seconds: int = 7 * 24 * 3600
    """How long the signatures of a slash or anchor order stay valid on chain."""

    def __post_init__(self) -> None:
        if self.min_stake_wei is None:
            object.__setattr__(self, "min_stake_wei", SLASHES_AT_STAKE * self.tariff.slash_wei)
        if self.min_stake_wei < self.tariff.slash_wei:
            raise ValueError(
                f"the minimum stake ({self.min_stake_wei} wei) is below the slash ({self.tariff.slash_wei} wei): a slash "
                "is capped at the stake left, so a proven fault would cost less than its price; raise --min-stake-wei"
            )
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError("sample_rate must be in [0, 1]")
        check_secret(self.sample_secret, self.sample_rate)
        if self.epoch_seconds <= 0 or self.epoch_entries <= 0:
            raise ValueError("epochs close after a positive number of seconds or entries")
        if self.proposer_grace_seconds < 0:
            raise ValueError("proposer_grace_seconds must be >= 0")
        if not 0.0 <= self.audit_rate <= 1.0:
            raise ValueError("audit_rate must be in [0, 1]")
        check_secret(self.audit_secret, self.audit_rate)
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be at least 1 KiB")
