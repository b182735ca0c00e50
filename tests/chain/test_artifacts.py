"""The committed ABI and bytecode are what the pinned solc-js compiles from the committed sources."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"
BUILD = CONTRACTS / "build"


@pytest.mark.slow
def test_committed_artifacts_match_a_fresh_compile(tmp_path):
    """One compile (about 5 s): `compile.js --check` against a copy of build/ with one foreign file added
    must report that file and nothing else, so every committed artifact equals the fresh one."""
    node = shutil.which("node")
    assert node, "node is needed to compile the contracts (make test runs npm ci)"
    copy = tmp_path / "build"
    shutil.copytree(BUILD, copy)
    (copy / "extra").mkdir()
    (copy / "extra" / "Foreign.json").write_text("{}")
    check = subprocess.run(
        [node, "compile.js", "--check", "--out", str(copy)], cwd=CONTRACTS, capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 1, check.stdout + check.stderr
    problems = check.stderr.strip().split(": ", 1)[1].split(", ")
    assert problems == ["unexpected extra/Foreign.json"], (
        f"committed contracts/build differs from a fresh compile: {problems}; run `make contracts` and commit it"
    )


def test_artifacts_pin_the_evm_both_backends_run():
    artifact = json.loads((BUILD / "StagewiseStaking.json").read_text())
    assert artifact["compiler"]["evmVersion"] == "cancun"
    assert artifact["compiler"]["solc"].startswith("0.8.37")
    names = {e["name"] for e in artifact["abi"] if e["type"] == "error"}
    assert {"NotValidator", "EvidenceAlreadyUsed", "EpochNotNext", "TooFewSignatures", "SignerOutOfOrder", "InvalidProof", "ReentrantCall"} <= names
