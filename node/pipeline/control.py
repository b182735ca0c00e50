"""Who may steer a stage server: signed control requests from the orchestrator it trusts.

The control routes of a stage server (`PUT /v1/assignment`, `DELETE /v1/assignment`, `POST /v1/jobs`)
decide what the stage computes, for which group, and with which seed (PROTOCOL I1: the seed is the
orchestrator's, never a stranger's). So each control request carries an EIP-191 signature by an orchestrator
key, over one line per field:

    stagewise stage control v1
    audience <the stage server's worker address, lowercase>
    method <PUT|DELETE|POST>
    path <the URL path, e.g. /v1/assignment>
    timestamp <unix seconds>
    nonce <0x + 32 hex>
    body <0x + keccak256 of the exact body bytes>

sent as the headers `X-Stagewise-Signer`, `X-Stagewise-Timestamp`, `X-Stagewise-Nonce` and
`X-Stagewise-Signature`. The audience binds a request to one stage server (a DELETE meant for one worker
cannot release another), the timestamp (within `max_skew_s`, and not before the server started: the nonces
seen before a restart are gone) and the nonce (remembered while the timestamp is fresh) make every request
count once.

A worker trusts the validator address its validator publishes on GET /health (field "validator"); a local
pipeline trusts the throwaway key it signs with. A server that trusts nobody refuses every control request.
Read-only routes stay public.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from eth_utils import is_address

from ledger import json_input
from ledger.errors import StagewiseError
from node.protocol.signing import SignatureError, SigningKey, keccak256, recover_message

SIGNER_HEADER = "X-Stagewise-Signer"
TIMESTAMP_HEADER = "X-Stagewise-Timestamp"
NONCE_HEADER = "X-Stagewise-Nonce"
SIGNATURE_HEADER = "X-Stagewise-Signature"
MAX_SKEW_S = 120
MAX_NONCES = 65536


class ControlRefused(StagewiseError):
    """A control request that is not signed by a trusted orchestrator: `status` 401 or 403, `code`, message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def control_message(audience: str, method: str, path: str, timestamp: int, nonce: str, body: bytes) -> bytes:
    """The bytes a control request's signature covers (EIP-191 personal message)."""
    return "\n".join([
        "stagewise stage control v1",
        f"audience {audience.lower()}",
        f"method {method.upper()}",
        f"path {path}",
        f"timestamp {int(timestamp)}",
        f"nonce {nonce.lower()}",
        f"body 0x{keccak256(body).hex()}",
    ]).encode()


def sign_control(
    key: SigningKey, audience: str, method: str, path: str, body: bytes = b"", *, now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Headers that make one request (to the stage server of worker `audience`) acceptable once."""
    timestamp = int(time.time() if now is None else now)
    nonce = nonce or "0x" + os.urandom(16).hex()
    signature = key.sign_message(control_message(audience, method, path, timestamp, nonce, body))
    return {
        SIGNER_HEADER: key.address,
        TIMESTAMP_HEADER: str(timestamp),
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: "0x" + signature.hex(),
    }


@dataclass
class ControlGuard:
    """The stage server's check. `trusted`: orchestrator addresses; `audience`: this server's worker address.

    Nonces are remembered per request until their timestamp could no longer pass (2 x max_skew_s), at most
    `max_nonces` of them; only requests from a trusted signer are remembered, so strangers cannot fill the
    memory. When it is full of fresh nonces the oldest is dropped and every request not newer than it is
    refused from then on (a `floor`), so a dropped nonce can never be replayed.
    """

    audience: str
    trusted: frozenset[str] = frozenset()
    max_skew_s: float = MAX_SKEW_S
    max_nonces: int = MAX_NONCES
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self.trust(self.trusted)
        self._seen: collections.OrderedDict[str, int] = collections.OrderedDict()  # nonce -> timestamp
        self._floor = -1
        # The nonces seen before a restart are gone: a request signed before this guard existed is refused.
        self._started = int(self.clock())

    def trust(self, controllers: Iterable[str]) -> None:
        """Replace the trusted orchestrator addresses (a worker whose validator changed its key)."""
        controllers = list(controllers)
        bad = [c for c in controllers if not (isinstance(c, str) and is_address(c))]
        if bad:
            raise ValueError(f"not addresses: {bad}")
        self.trusted = frozenset(c.lower() for c in controllers)

    def check(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> str:
        """The trusted signer of this request; raises ControlRefused (401 or 403) otherwise. Counts the nonce."""
        fields = [headers.get(name) for name in (SIGNER_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)]
        if any(value is None for value in fields):
            raise ControlRefused(401, "unsigned_request",
                                 f"{method} {path} changes this stage server: sign it as the orchestrator "
                                 f"({SIGNER_HEADER}, {TIMESTAMP_HEADER}, {NONCE_HEADER}, {SIGNATURE_HEADER})")
        claimed, timestamp_text, nonce, signature_hex = fields
        try:
            timestamp = int(timestamp_text)
            signature = json_input.hex_bytes(signature_hex, "signature", length=65)
        except ValueError:
            raise ControlRefused(401, "bad_signature", "the timestamp or the signature is not well formed") from None
        if not (nonce.startswith("0x") and 18 <= len(nonce) <= 130):
            raise ControlRefused(401, "bad_signature", "the nonce must be 0x + 16 to 64 random bytes in hex")
        now = self.clock()
        if abs(now - timestamp) > self.max_skew_s:
            raise ControlRefused(401, "stale_request",
                                 f"timestamp {timestamp} is {now - timestamp:+.0f} s from this server's clock "
                                 f"(at most {self.max_skew_s:.0f} s either way)")
        if timestamp < self._started:
            raise ControlRefused(401, "stale_request",
                                 f"timestamp {timestamp} is from before this stage server started ({self._started}); "
                                 "sign a fresh request")
        try:
            signer = recover_message(control_message(self.audience, method, path, timestamp, nonce, body), signature)
        except SignatureError as error:
            raise ControlRefused(401, "bad_signature", str(error)) from None
        if signer.lower() != claimed.lower():
            raise ControlRefused(401, "bad_signature",
                                 f"the signature is not {claimed}'s over this request (method, path, body, audience)")
        if signer.lower() not in self.trusted:
            raise ControlRefused(403, "untrusted_signer",
                                 f"{signer} is not an orchestrator this stage server trusts")
        self._remember(nonce.lower(), timestamp, now)
        return signer

    def _remember(self, nonce: str, timestamp: int, now: float) -> None:
        if nonce in self._seen or timestamp <= self._floor:
            raise ControlRefused(401, "replayed_request", "this signed request was already used")
        horizon = now - 2 * self.max_skew_s
        while self._seen and next(iter(self._seen.values())) < horizon:
            self._seen.popitem(last=False)
        while len(self._seen) >= self.max_nonces:
            _, dropped = self._seen.popitem(last=False)
            self._floor = max(self._floor, dropped)
            if timestamp <= self._floor:
                raise ControlRefused(401, "replayed_request", "too many recent control requests; sign a fresh one")
        self._seen[nonce] = timestamp
