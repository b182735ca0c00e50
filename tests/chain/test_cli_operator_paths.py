"""Issue 18, items 4, 9 and 10: an operator's mistake on a chain command is one line on stderr that says
what is wrong and what to do (`error: <what>; <what to do>`), exit status 1, no traceback, no key or
password printed. Run through the real command (`node.cli.main.main`) against anvil."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.chain.abi import Artifact
from ledger.chain.client import ChainClient
from node import wallet
from node.cli.main import main
from node.protocol.signing import SigningKey

PASSWORD = "correct horse battery staple"
ROOT = Path(__file__).resolve().parents[2]


def one_error_line(capsys) -> str:
    """The single line a failed command printed on stderr."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def setup(anvil, tmp_path, monkeypatch):
    """A fresh contract on anvil (unbonding delay one hour), a worker key with 1 ETH in a keystore."""
    monkeypatch.setenv("STAGEWISE_KEYSTORE_PASSWORD", PASSWORD)
    worker = SigningKey.generate()
    keystore = wallet.create_keystore(tmp_path / "worker.json", PASSWORD, worker, scrypt_n=2).path
    chain = ChainClient.connect(anvil.url, dev_keys=anvil.keys)
    chain.deploy(anvil.keys[0], unbonding_delay=3600, validators=[anvil.keys[0].address])
    chain.fund(worker.address, 10**18)
    base = ["--rpc-url", anvil.url, "--contract", chain.address, "--keystore", str(keystore)]
    return chain, worker, keystore, base


def test_a_wrong_keystore_password_says_how_to_give_the_right_one(setup, tmp_path, capsys, monkeypatch):
    chain, worker, keystore, base = setup
    monkeypatch.setenv("STAGEWISE_KEYSTORE_PASSWORD", "not the password")
    assert main(["stake", "0.1", *base]) == 1
    line = one_error_line(capsys)
    assert f"does not open keystore {keystore}" in line and "STAGEWISE_KEYSTORE_PASSWORD" in line
    assert "--password-file" in line and "not the password" not in line and worker.secret.hex() not in line

    wrong = tmp_path / "wrong.txt"
    wrong.write_text("also not it\n")
    assert main(["stake", "0.1", *base, "--password-file", str(wrong)]) == 1
    line = one_error_line(capsys)
    assert f"the password in {wrong} does not open keystore {keystore}" in line and "also not it" not in line
    assert chain.stake_of(worker.address) == 0


def test_an_address_without_the_staking_contract_says_so_and_where_to_find_it(setup, anvil, capsys):
    chain, worker, keystore, base = setup
    empty = "0x" + "11" * 20
    attacker = chain.deploy_artifact(anvil.keys[0], Artifact.load("test/ReentrantAttacker"), chain.address).contract_address
    for address, why in ((empty, "no code there"), (attacker, "not StagewiseStaking")):
        cases = [
            ["stake", "0.1", "--rpc-url", anvil.url, "--contract", address, "--keystore", str(keystore)],
            ["claim", "--amount", "1", "--rpc-url", anvil.url, "--contract", address, "--keystore", str(keystore)],
            ["chain", "info", "--rpc-url", anvil.url, "--contract", address],
        ]
        for argv in cases:
            assert main(argv) == 1, argv
            line = one_error_line(capsys)
            assert f"no staking contract at {address} on chain {chain.chain_id}" in line and why in line, line
            assert "`stagewise chain deploy` printed" in line and "/health" in line, line


def test_staking_more_than_the_balance_says_both_before_sending_anything(setup, capsys):
    chain, worker, keystore, base = setup
    assert main(["stake", "5", *base]) == 1
    line = one_error_line(capsys)
    assert f"{worker.address} holds 1 ETH ({10**18} wei)" in line, line
    assert f"5 ETH ({5 * 10**18} wei)" in line and "stake less" in line, line
    assert chain.w3.eth.get_transaction_count(worker.address) == 0  # nothing was sent


def test_withdraw_too_early_on_a_quiet_chain_names_the_unlock_and_the_chains_clock(setup, capsys):
    chain, worker, keystore, base = setup
    assert main(["stake", "0.5", *base]) == 0
    assert main(["unstake", "0.5", *base]) == 0
    capsys.readouterr()
    release_at = chain.stake_info(worker.address).release_at
    latest = chain.timestamp()
    assert main(["withdraw", *base]) == 1
    line = one_error_line(capsys)
    when = lambda t: __import__("datetime").datetime.fromtimestamp(t, __import__("datetime").timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC")
    assert f"can withdraw from {when(release_at)}" in line, line
    assert f"the chain's latest block is from {when(latest)}" in line, line
    assert "only when a block is mined" in line, line


def test_chain_deploy_prints_its_result_once(anvil, tmp_path):
    owner = SigningKey(bytes(anvil.keys[1].key))
    keystore = wallet.create_keystore(tmp_path / "owner.json", PASSWORD, owner, scrypt_n=2).path
    env = {**os.environ, "STAGEWISE_KEYSTORE_PASSWORD": PASSWORD, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "node.cli.main", "--data-dir", str(tmp_path / "home"), "chain", "deploy",
         "--rpc-url", anvil.url, "--keystore", str(keystore)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert result.returncode == 0, result.stderr
    address = re.search(r"deployed StagewiseStaking at (0x[0-9a-fA-F]{40})", result.stdout).group(1)
    assert (result.stdout + result.stderr).count(address) == 1, result.stdout + result.stderr
