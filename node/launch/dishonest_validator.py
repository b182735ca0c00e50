"""The devnet's dishonest validator: a key in the contract's validator set that tries to slash an honest worker.

It is the third validator of the devnet's set (threshold two) and the one that lies. It takes an honest job's
evidence from the real validator, rewrites the verdict so that it blames one of the job's honest stages,
serves that made-up evidence from its own API (`GET /v1/jobs/{job_id}/evidence`, where its peers fetch
what they judge) and asks both other validators to co-sign the slash. Each recomputes the verdict from the
evidence (PROTOCOL I5) and refuses; the dishonest validator then sends the order with its own signature
alone, and the contract refuses it (`TooFewSignatures`). The story holds when both refused, the chain
refused, and the honest worker kept its whole stake (PROTOCOL I7).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib import error as urlerror
from urllib import request as urlrequest

from eth_account import Account

from ledger import json_input
from ledger.chain.client import ChainClient
from ledger.chain.errors import ChainError
from ledger.chain.orders import SlashOrder
from node.validator.evidence import Evidence, evidence_hash

_EVIDENCE_PATH = re.compile(r"^/v1/jobs/(0x[0-9a-f]{64})/evidence$")


@dataclass(frozen=True)
class Attempt:
    """How the dishonest slash ended: each validator's refusal (None: it signed), the chain's answer."""

    worker: str
    job_id: str
    refusals: dict[str, str | None]
    chain_refusal: str | None
    stake_before: int
    stake_after: int

    @property
    def refused(self) -> bool:
        return (all(reason is not None for reason in self.refusals.values()) and self.chain_refusal is not None
                and self.stake_after == self.stake_before)


class DishonestValidator:
    """A validator key with an API that serves made-up evidence; it co-signs nothing for anyone."""

    def __init__(self) -> None:
        self.key = Account.create()
        self.evidence: dict[str, dict[str, Any]] = {}
        served = self.evidence

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                found = _EVIDENCE_PATH.match(self.path)
                document = served.get(found.group(1)) if found else None
                self._answer(200 if document else 404, document or {"error": {"code": "not_found", "message": ""}})

            def do_POST(self) -> None:  # noqa: N802
                self._answer(503, {"error": {"code": "unavailable", "message": "this validator co-signs nothing"}})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="dishonest-validator", daemon=True).start()

    @property
    def address(self) -> str:
        return self.key.address

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def attempt_slash(self, chain: ChainClient, validators: dict[str, str], job: dict[str, Any], stage: int,
                      gas_payer: Any) -> Attempt:
        """Make up a slash of `job`'s honest stage `stage`, ask `validators` (name -> API URL) to co-sign it,
        then send it with this key's signature alone."""
        job_id = job["job_id"]
        with urlrequest.urlopen(f"{validators[next(iter(validators))]}/v1/jobs/{job_id}/evidence", timeout=30) as response:
            document = json_input.read_json_file(response, max_bytes=256 << 20)
        slash_wei = int(document["tariff"]["slash_wei"])
        document["verdict"] = dict(document["verdict"], outcome="blamed", blamed_stage=stage, reason="proof",
                                   rewards_wei=["0"] * len(document["verdict"]["rewards_wei"]), slash_wei=str(slash_wei))
        self.evidence[job_id] = document
        worker = job["stages"][stage]["worker"]
        order = SlashOrder(worker, slash_wei, evidence_hash(Evidence.from_dict(document)), chain.order_deadline())
        stake_before = chain.stake_info(worker).slashable
        body = json.dumps({"order": order.to_json(), "proposer": self.url, "job_id": job_id}).encode()
        refusals = {name: _cosign(url, body) for name, url in validators.items()}
        chain_refusal = None
        try:
            chain.slash(gas_payer, order, chain.sign_all(order, [self.key]))
        except ChainError as error:
            chain_refusal = str(error)
        return Attempt(worker, job_id, refusals, chain_refusal, stake_before, chain.stake_info(worker).slashable)


def _cosign(url: str, body: bytes) -> str | None:
    """The validator's refusal of the order (its reason), or None when it signed."""
    request = urlrequest.Request(f"{url}/v1/cosign", data=body, headers={"Content-Type": "application/json"})
    try:
        with urlrequest.urlopen(request, timeout=300):
            return None
    except urlerror.HTTPError as error:
        try:
            return str(json_input.read_json_file(error)["error"]["message"])
        except (json_input.JsonInputError, KeyError, TypeError):
            return f"HTTP {error.code}"
