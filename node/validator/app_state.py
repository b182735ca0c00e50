"""What every handler of the validator's app can reach: `app[NODE]` (the ValidatorNode: ledger, config,
metrics, models, chain) and, when orchestration is on, `app[ORCHESTRATOR]`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

NODE: web.AppKey[Any] = web.AppKey("validator_node", object)
ORCHESTRATOR: web.AppKey[Any] = web.AppKey("orchestrator", object)
