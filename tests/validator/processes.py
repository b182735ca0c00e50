"""Validator processes for the crash and concurrency tests: `stagewise validator run` as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.validator.conftest import TEST_DOMAIN


def sync_url(url: str) -> str:
    return url.replace("+aiosqlite", "").replace("+asyncpg", "")


def start_validator(db_url: str, model_dir: Path, home: Path, validator_id: str, *extra: str) -> tuple[subprocess.Popen, str]:
    """Start a validator without a chain or orchestration; returns the process and its base URL."""
    env = {**os.environ, "STAGEWISE_HOME": str(home), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "node.cli", "--db", db_url, "validator", "run",
        "--no-chain", "--chain-id", str(TEST_DOMAIN.chain_id), "--contract", TEST_DOMAIN.verifying_contract,
        "--no-orchestration", "--model-dir", str(model_dir), "--port", "0", "--validator-id", validator_id,
        "--validation-workers", "1", *extra,
    ]
    log = open(home / f"{validator_id}.log", "ab")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=env)
    deadline = time.monotonic() + 60
    line = process.stdout.readline()
    if not line or time.monotonic() > deadline:
        process.kill()
        raise RuntimeError(f"validator {validator_id} did not start: {(home / f'{validator_id}.log').read_text()[-2000:]}")
    return process, json.loads(line)["url"]


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
