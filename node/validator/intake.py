"""Bundle intake: every check that can refuse a bundle before it is written, cheapest first.

A refused bundle writes nothing and gets a JSON error naming why (I3). In order: the body parses as a
bundle (400), its model is one this validator can replay (422), every receipt is exactly the one the spec,
output and proofs imply, so a job id that does not match its spec is refused here (422), the output obeys
the spec's stop ids (422), every receipt and complaint recovers to the worker its stage assigns (403), and
every signer has stake (403). What passes is a bundle worth storing; whether it is *true* is the replay's
business, later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

from node.bundle import Bundle, BundleError, check_receipts, check_signers
from node.receipts import ReceiptDomain
from node.validator.errors import ApiError


@dataclass(frozen=True)
class Admitted:
    bundle: Bundle
    signers: tuple[str, ...]


StakeOf = Callable[[list[str]], Awaitable[dict[str, int]]]


async def admit(
    body: bytes,
    *,
    known_models: frozenset[str],
    domain: ReceiptDomain,
    stake_of: StakeOf,
    min_stake_wei: int,
) -> Admitted:
    if not body:
        raise ApiError(400, "malformed_json", "the request body is empty; send a bundle as JSON")
    try:
        bundle = Bundle.from_json(body)
    except BundleError as error:
        code = "malformed_json" if "not valid JSON" in str(error) or "nested too deeply" in str(error) else "malformed_bundle"
        raise ApiError(400, code, str(error)) from None
    spec = bundle.spec
    if spec.model_id not in known_models:
        raise ApiError(422, "unknown_model", f"this validator cannot replay model {spec.model_id}")
    try:
        check_receipts(bundle)
    except BundleError as error:
        raise ApiError(422, "receipt_mismatch", str(error)) from None
    stops = set(spec.sampling.stop_ids)
    if stops and any(t in stops for t in bundle.output_token_ids[:-1]):
        raise ApiError(422, "output_after_stop", "the output continues past a stop token")
    try:
        signers = check_signers(bundle, domain)
    except BundleError as error:
        code = "bad_signature" if "signature:" in str(error) else "unassigned_signer"
        raise ApiError(403, code, str(error)) from None
    stakes = await stake_of(list(signers))
    for index, signer in enumerate(signers):
        if stakes.get(signer, 0) < min_stake_wei:
            raise ApiError(
                403,
                "unstaked_signer",
                f"stage {index} signer {signer} has stake {stakes.get(signer, 0)} wei, needs {min_stake_wei}",
            )
    return Admitted(bundle, signers)
