"""Every `STAGEWISE_*` environment variable the node reads, and where a node keeps its files.

This module is the one place that knows them: each is a `Variable` below (its name, type, default and a
line of what it sets), and `VARIABLES` lists them all. The command line (node/cli/) gives each option the
`envvar` and default of its variable, so flags win over environment variables, which win over defaults;
the few variables that are no option (secrets that must not show in `ps`, the stage key handed to a child
process) are read with `Variable.get()`. Nothing else in node/ or ledger/ reads `os.environ` for a
`STAGEWISE_*` name (tests/test_settings.py checks).

The data directory is `--data-dir` / `STAGEWISE_HOME` (default `~/.stagewise`) and the ledger `--db` /
`STAGEWISE_DB` (default a SQLite file in the data directory), its password in `STAGEWISE_DB_PASSWORD_FILE` when
set; `chain deploy` remembers the chain it deployed to in <data dir>/chain.json.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.database_url import async_url, with_password_file

_TRUE = ("1", "true", "t", "yes", "y", "on")


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, the type of its value, its default and one line of what it sets."""

    name: str
    type: type
    default: Any
    doc: str

    def get(self) -> Any:
        """The variable's value, converted to its type; the default when it is unset or empty."""
        raw = os.environ.get(self.name)
        if raw is None or raw == "":
            return self.default
        if self.type is bool:
            return raw.strip().lower() in _TRUE
        return self.type(raw)


def _variables(*variables: Variable) -> dict[str, Variable]:
    return {variable.name: variable for variable in variables}


# ------------------------------------------------------------------------------------------- every command
HOME = Variable("STAGEWISE_HOME", Path, None, "where keys, caches and the default SQLite ledger live")
CACHE_DIR = Variable("STAGEWISE_CACHE_DIR", Path, None,
                     "where converted models go, rebuilt at any time (default <STAGEWISE_HOME>/cache)")
DB = Variable("STAGEWISE_DB", str, None, "SQLAlchemy URL of the ledger")
DB_PASSWORD_FILE = Variable("STAGEWISE_DB_PASSWORD_FILE", Path, None,
                            "file holding the ledger database's password, put into the STAGEWISE_DB URL")

# ------------------------------------------------------------------------------------ keys and the chain
KEYSTORE = Variable("STAGEWISE_KEYSTORE", Path, None, "keystore v3 file the chain commands sign with")
KEYSTORE_PASSWORD = Variable("STAGEWISE_KEYSTORE_PASSWORD", str, None,
                             "the keystore password, when no --password-file is given (else a prompt)")
RPC_URL = Variable("STAGEWISE_RPC_URL", str, None, "chain JSON-RPC URL")
CONTRACT = Variable("STAGEWISE_CONTRACT", str, None, "staking contract address")
VALIDATOR_URL = Variable("STAGEWISE_VALIDATOR_URL", str, None, "a validator's base URL")

# ---------------------------------------------------------------------------------------- worker run
VALIDATOR_WAIT = Variable("STAGEWISE_VALIDATOR_WAIT", float, 600.0,
                          "seconds a starting worker waits for an unreachable validator, retrying with backoff")
STAGE_KEY = Variable("STAGEWISE_STAGE_KEY", str, None,
                     "a local pipeline's stage process signs with this private key (hex); set by its parent")

# ------------------------------------------------------------------------------------- validator run
MODEL_DIRS = Variable("STAGEWISE_MODEL_DIRS", str, None, "model directories the validator replays, ':'-separated")
MODEL = Variable("STAGEWISE_MODEL", str, None, "a bundled model to replay: smollm2 = SmolLM2-135M-Instruct")
EMBEDDED_CHAIN = Variable("STAGEWISE_EMBEDDED_CHAIN", bool, False,
                          "start an in-process EVM, deploy the contract and serve it on loopback")
NO_CHAIN = Variable("STAGEWISE_NO_CHAIN", bool, False,
                    "run without a chain: stakes come from the ledger only, nothing is sent")
CHAIN_ID = Variable("STAGEWISE_CHAIN_ID", int, None, "chain id of the receipts' EIP-712 domain with --no-chain")
VALIDATOR_KEYSTORE = Variable("STAGEWISE_VALIDATOR_KEYSTORE", Path, None,
                              "the validator's keystore v3 file, for slashes and anchors")
VALIDATOR_KEY = Variable("STAGEWISE_VALIDATOR_KEY", str, None,
                         "the validator's private key (hex) instead of a keystore: for dev chains")
HOST = Variable("STAGEWISE_HOST", str, "127.0.0.1", "the validator's listen address")
PORT = Variable("STAGEWISE_PORT", int, 8700, "the validator's listen port, 0 = any free one")
SAMPLE_RATE = Variable("STAGEWISE_SAMPLE_RATE", float, 1.0,
                       "fraction of jobs replayed, the rest accepted unreplayed; see docs/validator.md")
SAMPLE_SECRET = Variable("STAGEWISE_SAMPLE_SECRET", str, "",
                         "secret that makes the replayed jobs unpredictable to workers, at least 16 bytes")
EPOCH_SECONDS = Variable("STAGEWISE_EPOCH_SECONDS", float, 60.0, "close an epoch at least this often")
EPOCH_ENTRIES = Variable("STAGEWISE_EPOCH_ENTRIES", int, 1000, "close an epoch once this many entries wait")
ADMIN_TOKEN_FILE = Variable("STAGEWISE_ADMIN_TOKEN_FILE", Path, None, "file holding the bearer token for admin actions")
ADMIN_TOKEN = Variable("STAGEWISE_ADMIN_TOKEN", str, None, "the bearer token for admin actions itself")
VALIDATOR_ID = Variable("STAGEWISE_VALIDATOR_ID", str, None,
                        "name of this process's queue claims; keep it across restarts to reclaim at once")
LEASE_SECONDS = Variable("STAGEWISE_LEASE_SECONDS", float, 120.0,
                         "a claimed job unfinished after this long is taken again")
WEI_PER_WORK_UNIT = Variable("STAGEWISE_WEI_PER_WORK_UNIT", int, 10**9, "reward per layer x token, in wei")
SLASH_WEI = Variable("STAGEWISE_SLASH_WEI", int, 10**16, "stake taken from a blamed worker, in wei")
MIN_STAKE_WEI = Variable("STAGEWISE_MIN_STAKE_WEI", int, None,
                         "stake a worker needs to register, to be issued a job and to sign a receipt")
BUNDLE_DEADLINE = Variable("STAGEWISE_BUNDLE_DEADLINE", float, 600.0,
                           "seconds after which an issued job without its complete bundle is soft-invalidated")
MAX_BODY_BYTES = Variable("STAGEWISE_MAX_BODY_BYTES", int, 8 * 1024 * 1024, "largest request body accepted")
VALIDATION_WORKERS = Variable("STAGEWISE_VALIDATION_WORKERS", int, 1, "concurrent validations in this process")
PRECISION = Variable("STAGEWISE_PRECISION", str, "fp32",
                     "what the model's jobs declare and its stages compute in: fp32, bf16 or fp16 (PROTOCOL I8)")
REPLAY_DEVICE = Variable("STAGEWISE_REPLAY_DEVICE", str, "cpu", "torch device the validator replays on (cpu, cuda)")
REPLAY_THREADS = Variable("STAGEWISE_REPLAY_THREADS", int, 0, "torch threads for replays, 0 = half the cores")
NO_ORCHESTRATION = Variable("STAGEWISE_NO_ORCHESTRATION", bool, False,
                            "validate only: no worker registration, groups or dispatch")
PEERS = Variable("STAGEWISE_PEERS", str, None,
                 "other validators' API URLs, space-separated: they co-sign this node's slashes and anchors (I7)")
PUBLIC_URL = Variable("STAGEWISE_PUBLIC_URL", str, None,
                      "this validator's API URL as its peers reach it (default http://HOST:PORT)")
AUDIT_RATE = Variable("STAGEWISE_AUDIT_RATE", float, 0.1,
                      "fraction of a peer's rewarded jobs replayed before co-signing its anchor")
PROPOSER_GRACE = Variable("STAGEWISE_PROPOSER_GRACE", float, 120.0,
                          "seconds the chain waits at an epoch for the next epoch's proposer (validators take turns "
                          "in address order) before any validator of the set may propose it")
COSIGN_ONLY = Variable("STAGEWISE_COSIGN_ONLY", bool, False,
                       "only judge and co-sign peers' slash and anchor orders: no jobs, epochs or transactions")
ACCEPT_UNISSUED_JOBS = Variable("STAGEWISE_ACCEPT_UNISSUED_JOBS", bool, False,
                                "with --no-orchestration: take bundles of any job, not only issued ones")

# ------------------------------------------------------------------------- validator run: orchestration
TASKS = Variable("STAGEWISE_TASKS", str, None, "JSONL task file, or 'arithmetic' for the bundled set")
SEED_SECRET = Variable("STAGEWISE_SEED_SECRET", str, None,
                       "secret (hex) job seeds are derived from, when no --seed-secret-file is given")
ALLOW_PRIVATE_STAGE_URLS = Variable("STAGEWISE_ALLOW_PRIVATE_STAGE_URLS", bool, False,
                                    "accept workers whose stage URL is a loopback, private or link-local address")
DEFENCE_SECONDS = Variable("STAGEWISE_DEFENCE_SECONDS", float, 30.0,
                           "how long a verdict that blames a receiving stage waits for its defence")

# ----------------------------------------------------------------------- HTTP limits (validator, worker)
MAX_CONNECTIONS = Variable("STAGEWISE_MAX_CONNECTIONS", int, 1024, "open connections in all")
MAX_CONNECTIONS_PER_CLIENT = Variable("STAGEWISE_MAX_CONNECTIONS_PER_CLIENT", int, 128,
                                      "open connections from one address")
REQUESTS_PER_SECOND = Variable("STAGEWISE_REQUESTS_PER_SECOND", float, 200.0,
                               "average requests per second from one address")
HEADER_TIMEOUT = Variable("STAGEWISE_HEADER_TIMEOUT", float, 20.0, "seconds a connection has to send a request's headers")

VARIABLES: dict[str, Variable] = _variables(
    *(value for value in list(globals().values()) if isinstance(value, Variable))
)

# The names as they were known before this table: kept for the code and tests that use them.
HOME_ENV = HOME.name
DB_ENV = DB.name


def data_dir() -> Path:
    """The data directory, created on first use."""
    path = Path(HOME.get() or Path.home() / ".stagewise").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Converted models and other derived files that can be rebuilt at any time (`STAGEWISE_CACHE_DIR`, else the
    data directory's cache/)."""
    path = Path(CACHE_DIR.get() or data_dir() / "cache").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def database_url() -> str:
    """An async SQLAlchemy URL: `STAGEWISE_DB` (with the password in `STAGEWISE_DB_PASSWORD_FILE`, when
    set), or a SQLite file in the data directory."""
    url = DB.get()
    if url:
        return async_url(with_password_file(url, DB_PASSWORD_FILE.get()))
    return f"sqlite+aiosqlite:///{data_dir() / 'ledger.db'}"


def chain_file() -> Path:
    """Where `chain deploy` and `chain serve` remember the node and the contract: <data dir>/chain.json."""
    return data_dir() / "chain.json"


def remembered_chain() -> dict[str, Any]:
    """What chain.json remembers ({rpc_url, chain_id, contract}), or {} when there is none."""
    path = chain_file()
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def remember_chain(rpc_url: str, chain_id: int, contract: str) -> Path:
    path = chain_file()
    path.write_text(json.dumps({"rpc_url": rpc_url, "chain_id": chain_id, "contract": contract}, indent=2) + "\n")
    return path
