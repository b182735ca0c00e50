"""How the last stage assembles a job's bundle: every other stage's signed receipt, fetched from its worker
(`fetch_peer_stage`), with ours, checked as the validator will (`assemble_bundle`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace

import aiohttp

from ledger import json_input
from node.protocol.bundle import Bundle, BundleError, SignedStage, check_receipts, check_signers
from node.protocol.receipts import ReceiptDomain, proofs_digest
from node.worker.errors import WorkerError, short_error
from node.worker.receipt_book import RECEIPT_ROUTE, SignedJob, parse_signed_stage

StageFetcher = Callable[[int], Awaitable[SignedStage]]


async def fetch_peer_stage(
    session: aiohttp.ClientSession, stage_url: str, job_id_hex: str, *, wait_s: float = 30.0, poll_s: float = 0.2
) -> SignedStage:
    """A peer stage's signed receipt for a job, waiting up to `wait_s` for it to finish signing."""
    url = stage_url.rstrip("/") + RECEIPT_ROUTE.format(job_id=job_id_hex)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    last = "no answer"
    while True:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
                if response.status == 200:
                    return parse_signed_stage((await json_input.read_json(response))["stage"])
                last = f"HTTP {response.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, KeyError, TypeError) as error:
            last = short_error(error)
        if loop.time() >= deadline:
            raise WorkerError(f"no signed receipt for job {job_id_hex} from {stage_url} within {wait_s:.0f}s ({last})")
        await asyncio.sleep(poll_s)


async def assemble_bundle(own: SignedJob, own_index: int, fetch: StageFetcher, domain: ReceiptDomain) -> Bundle:
    """Our signed stage plus every other stage's, fetched concurrently, checked as the validator will."""
    spec = own.spec
    others = [i for i in range(len(spec.stages)) if i != own_index]
    fetched = dict(zip(others, await asyncio.gather(*(fetch(i) for i in others))))
    fetched[own_index] = own.stage
    stages = [fetched[i] for i in range(len(spec.stages))]
    for i in range(1, len(stages)):  # the claims a stage received travel only where its inputs are in question
        if stages[i].receipt.inputs_digest == proofs_digest(stages[i - 1].proofs):
            stages[i] = replace(stages[i], received=())
    bundle = Bundle(spec, tuple(stages), own.output_token_ids)
    try:
        check_receipts(bundle)
        check_signers(bundle, domain)
    except BundleError as error:
        raise WorkerError(f"bundle {spec.job_id_hex} does not hold together: {error}") from None
    return bundle
