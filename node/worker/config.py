"""What `stagewise worker run` is told (`WorkerConfig`): the flags, after node/cli/worker.py read them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.http.limits import HttpLimits


@dataclass(frozen=True)
class WorkerConfig:
    keystore: Path
    validator_url: str
    password_file: Path | None = None
    rpc_url: str | None = None
    contract: str | None = None
    min_stake_wei: int | None = None
    host: str = "127.0.0.1"
    port: int = 0
    public_url: str | None = None
    memory_bytes: int = 8 << 30
    layer_tokens_per_s: float | None = 1000.0
    """What the orchestrator splits layers by; None: measured at start (node/pipeline/throughput.py)."""
    region: str = "local"
    model_dirs: tuple[Path, ...] = ()
    device: str = "cpu"
    precisions: tuple[str, ...] | None = None
    """The precisions offered to the validator (PROTOCOL I8); None: every one `device` computes
    (node/pipeline/devices.py)."""
    heartbeat_s: float = 5.0
    grace_s: float = 30.0
    submit_attempts: int = 14
    """Backoff 0.5 s doubling to 30 s: 14 attempts span about 6 minutes, inside the validator's default
    10-minute bundle deadline (after which the job is soft-invalidated and the bundle no longer pays)."""
    peer_wait_s: float = 60.0
    register_timeout_s: float = 600.0
    validator_wait_s: float = 600.0
    """How long a starting worker waits for an unreachable validator before it gives up."""
    tamper: Any = None
    """node.pipeline.engine.Tamper: changes what this stage SENDS after its honest proof was built. Only for
    tests; never set by `stagewise worker run`."""
    cheat: Any = None
    """node.worker.cheats.Cheat: changes the stage's weights once loaded or lies in its handoffs (`--cheat`, the
    devnet's cheater)."""
    http_limits: HttpLimits = HttpLimits()
    """What one client may cost the stage server (node/http/limits.py)."""
