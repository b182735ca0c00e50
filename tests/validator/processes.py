"""Validator processes for the crash and concurrency tests: `stagewise validator run` as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.validator.conftest import TEST_DOMAIN


def sync_url(url: str) -> str:
    return url.replace("+aiosqlite", "").replace("+asyncpg", "")


def start_validator(db_url: str, model_dir: Path, home: Path, validator_id: str, *extra: str) -> tuple[subprocess.Popen, str]:
    """Start a validator without a chain or orchestration; returns the process and its base URL."""
    process = spawn_validator(db_url, model_dir, home, validator_id, *extra)
    return process, wait_listening(process, home, validator_id)


def spawn_validator(db_url: str, model_dir: Path, home: Path, validator_id: str, *extra: str,
                    chain: tuple[str, ...] | None = None) -> subprocess.Popen:
    """`chain`: the chain flags (default: none, in TEST_DOMAIN)."""
    env = {**os.environ, "STAGEWISE_HOME": str(home), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if chain is None:
        chain = ("--no-chain", "--chain-id", str(TEST_DOMAIN.chain_id), "--contract", TEST_DOMAIN.verifying_contract)
    command = [
        sys.executable, "-m", "node.cli.main", "--db", db_url, "validator", "run", *chain,
        "--no-orchestration", "--model-dir", str(model_dir), "--port", "0", "--validator-id", validator_id,
        "--validation-workers", "1", *extra,
    ]
    log = open(home / f"{validator_id}.log", "ab")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=env)


def wait_listening(process: subprocess.Popen, home: Path, validator_id: str) -> str:
    """The base URL the validator prints once it listens (its first stdout line)."""
    line = process.stdout.readline()
    if not line:
        process.kill()
        raise RuntimeError(f"validator {validator_id} did not start: {(home / f'{validator_id}.log').read_text()[-2000:]}")
    return json.loads(line)["url"]


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
