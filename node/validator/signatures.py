"""Gathering a threshold of validator signatures for an outbox order (PROTOCOL I7), the proposer's side.

An outbox row (a slash a verdict owes, an anchor an epoch owes) becomes a typed order with a deadline the
first time it is taken; the order and every signature gathered for it are written back into the row
(`Ledger.set_outbox_payload`) before anything is sent, so a proposer killed mid-collection loses nothing and,
taken again, resumes with the same order. This node signs itself when it is in the contract's validator set,
then asks each `--peer` (`POST {peer}/v1/cosign`, node/validator/cosign.py) for the signatures still missing.
A signature counts only when it recovers, for this order in this contract's domain, to a validator of the
set; a peer that refuses, is down or answers garbage only delays the order. With fewer than `threshold`
signatures the row waits (`Waiting`), and the order is never sent with fewer.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

from ledger import json_input
from ledger.chain.orders import (
    AnchorOrder,
    Order,
    OrderSignatureError,
    SlashOrder,
    order_from_json,
    pack_signatures,
    sign_order,
    signer_of,
)
from ledger.errors import InvalidInput, StagewiseError
from ledger.outbox import OutboxRow

log = logging.getLogger(__name__)

COSIGN_TIMEOUT_S = 120.0  # a co-signer replays the evidence (a slash) or audits an epoch (an anchor)
RENEW_BEFORE_S = 3600  # an order whose deadline is this close is replaced (its signatures would expire)


class Waiting(StagewiseError):
    """Fewer than `threshold` signatures so far; the row waits and is taken again later."""


@dataclass(frozen=True)
class PeerAnswer:
    peer: str
    signer: str | None = None
    signature: bytes | None = None
    refusal: str | None = None  # the peer judged the order and refused it: its reason
    error: str | None = None  # the peer could not be reached or answered garbage


def order_of(row: OutboxRow, deadline: int) -> Order:
    """The typed order an outbox row owes, valid until `deadline`."""
    p = row.payload
    if row.kind == "slash":
        return SlashOrder(p["worker"], int(p["amount"]), json_input.hex_bytes(p["evidence_hash"], "evidence_hash", length=32),
                          deadline)
    if row.kind == "anchor":
        return AnchorOrder(int(p["epoch"]), json_input.hex_bytes(p["entries_root"], "entries_root", length=32),
                           json_input.hex_bytes(p["rewards_root"], "rewards_root", length=32), int(p["entry_count"]), deadline)
    raise InvalidInput(f"unknown outbox kind {row.kind!r}")


async def ask_peer(session: aiohttp.ClientSession, peer: str, body: dict[str, Any]) -> PeerAnswer:
    try:
        async with session.post(peer.rstrip("/") + "/v1/cosign", json=body,
                                timeout=aiohttp.ClientTimeout(total=COSIGN_TIMEOUT_S)) as response:
            answer = await json_input.read_json(response, max_bytes=1 << 16)
            if response.status == 422 and isinstance(answer, dict) and isinstance(answer.get("error"), dict):
                return PeerAnswer(peer, refusal=str(answer["error"].get("message"))[:500])
            if response.status != 200 or not isinstance(answer, dict):
                return PeerAnswer(peer, error=f"HTTP {response.status}")
            signer = answer.get("signer")
            signature = json_input.hex_bytes(answer.get("signature"), "signature", length=65)
            return PeerAnswer(peer, signer=signer if isinstance(signer, str) else None, signature=signature)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, json_input.JsonInputError) as error:
        return PeerAnswer(peer, error=f"{type(error).__name__}: {error}")


async def gather(node: Any, row: OutboxRow, threshold: int) -> tuple[Order, bytes]:
    """The row's order and `threshold` validators' packed signatures, or Waiting. Persists what it gathers."""
    chain = node.chain
    domain = chain.domain
    now = await asyncio.to_thread(chain.timestamp)
    payload = dict(row.payload)
    stored = payload.get("order")
    order = order_from_json(stored) if isinstance(stored, dict) else None
    signatures: dict[str, bytes] = {}
    if order is None or order.deadline < now + RENEW_BEFORE_S:
        order = order_of(row, now + node.config.order_ttl_seconds)
    else:
        for signer, hex_signature in (payload.get("signatures") or {}).items():
            signature = bytes.fromhex(hex_signature.removeprefix("0x"))
            if _recovers(order, domain, signature) == signer:
                signatures[signer] = signature
    validators: dict[str, bool] = {}

    async def is_validator(address: str) -> bool:
        if address not in validators:
            validators[address] = await asyncio.to_thread(chain.is_validator, address)
        return validators[address]

    signatures = {s: sig for s, sig in signatures.items() if await is_validator(s)}  # the set may have changed
    own = node.chain_key.address
    if own not in signatures and await is_validator(own):
        signatures[own] = sign_order(node.chain_key, order, domain)
    payload = await _kept(node, row, payload, order, signatures)  # the order is fixed before any peer sees it
    problems: list[str] = []
    if len(signatures) < threshold and node.config.peers:
        body = {"order": order.to_json(), "proposer": node.config.public_url}
        if own in signatures:  # an anchor's co-signers check whose turn it is by this signature (rotation.py)
            body["proposer_signature"] = "0x" + signatures[own].hex()
        if row.kind == "slash":
            body["job_id"] = row.payload.get("job_id")
        async with aiohttp.ClientSession() as session:
            answers = await asyncio.gather(*(ask_peer(session, peer, body) for peer in node.config.peers))
        for answer in answers:
            if answer.refusal is not None:
                node.metrics.peer_refusals.labels(row.kind).inc()
                log.warning("peer %s refused to co-sign %s %s: %s", answer.peer, row.kind, row.key, answer.refusal)
                problems.append(f"{answer.peer} refused: {answer.refusal}")
                continue
            if answer.error is not None:
                problems.append(f"{answer.peer} unreachable: {answer.error}")
                continue
            signer = _recovers(order, domain, answer.signature)
            if signer is None or signer != answer.signer or not await is_validator(signer):
                problems.append(f"{answer.peer} answered a signature that is not a validator's for this order")
                continue
            signatures[signer] = answer.signature
    await _kept(node, row, payload, order, signatures)
    if len(signatures) < threshold:
        raise Waiting(f"{len(signatures)} of {threshold} validator signatures" + (f" ({'; '.join(problems)})" if problems else ""))
    chosen = dict(sorted(signatures.items(), key=lambda item: int(item[0], 16))[:threshold])
    return order, pack_signatures(chosen)


async def _kept(node: Any, row: OutboxRow, payload: dict[str, Any], order: Order, signatures: dict[str, bytes]
                ) -> dict[str, Any]:
    """Write the order and its signatures into the row when they changed; the payload as written."""
    updated = dict(payload, order=order.to_json(),
                   signatures={s: "0x" + sig.hex() for s, sig in sorted(signatures.items())})
    if updated != payload:
        await node.ledger.set_outbox_payload(row.id, updated)
    return updated


def _recovers(order: Order, domain: Any, signature: bytes | None) -> str | None:
    if signature is None:
        return None
    try:
        return signer_of(order, domain, signature)
    except OrderSignatureError:
        return None
