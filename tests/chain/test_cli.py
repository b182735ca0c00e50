"""The chain commands, end to end against anvil, signing with keystore files."""

from __future__ import annotations

import json
import sys

import click
import pytest
from eth_hash.auto import keccak

from ledger import epochs
from ledger.chain.client import ChainClient
from node import wallet
from node.cli import chain as chain_cli
from node.cli.chain import parse_amount
from node.cli.main import CommandError
from node.protocol.signing import SigningKey

PASSWORD = "correct horse battery staple"


def keystore_for(tmp_path, name: str, key: SigningKey):
    return wallet.create_keystore(tmp_path / f"{name}.json", PASSWORD, key, scrypt_n=2).path


def main(argv: list[str]) -> int:
    """`stagewise ARGV` with only the chain commands assembled (as node.cli.main.main runs them)."""
    cli = click.Group("stagewise", commands=chain_cli.COMMANDS)
    try:
        return int(cli.main(args=argv, prog_name="stagewise", standalone_mode=False) or 0)
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def run(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    out = capsys.readouterr().out.strip()
    assert "\n" not in out, "each command confirms in one line"
    return out


def test_parse_amount_is_exact():
    assert parse_amount("1.5") == 1_500_000_000_000_000_000
    assert parse_amount("20gwei") == 20 * 10**9
    assert parse_amount("1000wei") == 1000
    assert parse_amount("0.000000000000000001eth") == 1
    with pytest.raises(Exception, match="whole"):
        parse_amount("0.5wei")
    with pytest.raises(Exception, match="not an amount"):
        parse_amount("lots")


def test_deploy_stake_unstake_withdraw_and_claim(anvil, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("STAGEWISE_KEYSTORE_PASSWORD", PASSWORD)
    monkeypatch.setenv("STAGEWISE_RPC_URL", anvil.url)
    owner, worker = SigningKey(bytes(anvil.keys[0].key)), SigningKey.generate()
    owner_ks, worker_ks = keystore_for(tmp_path, "owner", owner), keystore_for(tmp_path, "worker", worker)

    out = run(capsys, "chain", "deploy", "--keystore", str(owner_ks), "--unbonding-delay", "30")
    assert out.startswith("deployed StagewiseStaking at 0x") and owner.address in out
    contract = json.loads((tmp_path / "home" / "chain.json").read_text())["contract"]
    chain = ChainClient.connect(anvil.url, address=contract, dev_keys=anvil.keys)
    assert chain.is_validator(owner.address)

    assert f"sent 3 ETH ({3 * 10**18} wei)" in run(capsys, "chain", "fund", worker.address, "3")
    assert f"sent 10 ETH ({10 * 10**18} wei)" in run(capsys, "chain", "fund", worker.address, "10")  # printed "1 ETH"
    out = run(capsys, "stake", "2", "--keystore", str(worker_ks))
    assert f"staked 2 ETH ({2 * 10**18} wei) from {worker.address}" in out
    out = run(capsys, "chain", "unstake", "--amount", "0.5eth", "--keystore", str(worker_ks))
    assert "unbonding 0.5 ETH" in out and "withdrawable from" in out

    assert main(["withdraw", "--keystore", str(worker_ks)]) == 1
    assert "can withdraw from" in capsys.readouterr().err
    chain.advance_time(31)
    assert "withdrew 0.5 ETH" in run(capsys, "withdraw", "--keystore", str(worker_ks))
    assert chain.stake_info(worker.address).active == int(1.5 * 10**18)

    proof = epochs.reward_proof(1, {worker.address: 12_345, owner.address: 1}, worker.address)
    chain.signed_anchor(owner, [owner], 1, keccak(b"entries"), bytes.fromhex(proof.rewards_root[2:]), 2)
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(json.dumps(proof.to_json()))
    assert main(["claim", "--proof-file", str(proof_file), "--keystore", str(worker_ks)]) == 1  # an empty pool
    assert "InsufficientRewardPool" in capsys.readouterr().err
    out = run(capsys, "chain", "fund-rewards", "1", "--keystore", str(owner_ks))  # issue 18, item 2
    assert f"added 1 ETH ({10**18} wei) from {owner.address} to the reward pool of {contract}" in out
    out = run(capsys, "claim", "--proof-file", str(proof_file), "--keystore", str(worker_ks))
    assert f"claimed 0.000000000000012345 ETH (12345 wei) for {worker.address}" in out
    assert "nothing to claim" in run(capsys, "claim", "--proof-file", str(proof_file), "--keystore", str(worker_ks))
    assert "active 1.5 ETH" in run(capsys, "chain", "info", worker.address)


def test_errors_are_one_line_and_keep_keys_secret(anvil, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("STAGEWISE_KEYSTORE_PASSWORD", PASSWORD)
    key = SigningKey.generate()
    ks = keystore_for(tmp_path, "k", key)
    chain = ChainClient.connect(anvil.url, dev_keys=anvil.keys)
    chain.deploy(anvil.keys[0], validators=[anvil.keys[0].address])
    chain.fund(key.address, 10**18)
    base = ["--rpc-url", anvil.url, "--contract", chain.address, "--keystore", str(ks)]

    assert main(["unstake", "1", *base]) == 1
    err = capsys.readouterr().err
    assert "InsufficientStake" in err and key.secret.hex() not in err
    assert (
        main(["stake", "1", "--rpc-url", "http://127.0.0.1:9", "--contract", chain.address, "--keystore", str(ks)]) == 1
    )
    assert "cannot reach the chain" in capsys.readouterr().err
    monkeypatch.setenv("STAGEWISE_KEYSTORE_PASSWORD", "wrong")
    assert main(["stake", "1", *base]) == 1
    assert "does not open keystore" in capsys.readouterr().err


async def _ledger_with_an_epoch(url: str, worker: str):
    from ledger import journal
    from ledger.store import Ledger

    ledger = await Ledger.open(url)
    try:
        await ledger.append([journal.reward(worker, 4_321, job_id=keccak(b"job"), stage=1, work_units=8)])
        return await ledger.close_epoch()
    finally:
        await ledger.close()


def test_claim_takes_its_proof_from_the_ledger(anvil, tmp_path, capsys, monkeypatch, sqlite_url):
    import asyncio

    monkeypatch.setenv("STAGEWISE_KEYSTORE_PASSWORD", PASSWORD)
    worker = SigningKey.generate()
    ks = keystore_for(tmp_path, "w", worker)
    chain = ChainClient.connect(anvil.url, dev_keys=anvil.keys)
    validator = anvil.keys[0]
    chain.deploy(validator, validators=[validator.address])
    chain.fund(worker.address, 10**18)
    chain.fund_rewards(validator, 10_000)
    base = ["--rpc-url", anvil.url, "--contract", chain.address, "--keystore", str(ks)]

    assert main(["claim", *base]) == 1
    assert "no epoch is anchored" in capsys.readouterr().err
    epoch = asyncio.run(_ledger_with_an_epoch(sqlite_url, worker.address))
    chain.signed_anchor(validator, [validator], epoch.number, epoch.entries_root, epoch.rewards_root, epoch.entry_count)
    monkeypatch.setenv("STAGEWISE_DB", sqlite_url)
    assert f"claimed 0.000000000000004321 ETH (4321 wei) for {worker.address}" in run(capsys, "claim", *base)
    assert chain.claimed_of(worker.address) == 4_321


def test_claim_takes_its_proof_from_a_validators_api_and_checks_it_against_the_chain(
    anvil, tmp_path, capsys, monkeypatch, sqlite_url
):
    import asyncio
    import threading

    from aiohttp import web

    from ledger.store import Ledger
    from node.protocol.receipts import ReceiptDomain
    from node.validator.app import build_app
    from node.validator.config import ValidatorConfig
    from node.validator.replay_models import ReplayModels
    from node.validator.service import ValidatorNode

    monkeypatch.setenv("STAGEWISE_KEYSTORE_PASSWORD", PASSWORD)
    worker, stranger = SigningKey.generate(), SigningKey.generate()
    chain = ChainClient.connect(anvil.url, dev_keys=anvil.keys)
    validator = anvil.keys[0]
    chain.deploy(validator, validators=[validator.address])
    chain.fund(worker.address, 10**18)
    chain.fund_rewards(validator, 10_000)
    epoch = asyncio.run(_ledger_with_an_epoch(sqlite_url, worker.address))
    chain.signed_anchor(validator, [validator], epoch.number, epoch.entries_root, epoch.rewards_root, epoch.entry_count)

    # the validator's API on its own loop in a thread, as a remote node would serve it
    loop, served, stop = asyncio.new_event_loop(), threading.Event(), asyncio.Event()  # the Event binds to loop on use
    address: list[str] = []

    async def serve():
        ledger = await Ledger.open(sqlite_url)
        node = ValidatorNode(ValidatorConfig(), ledger, domain=ReceiptDomain(chain.chain_id, chain.address), models=ReplayModels([]))
        runner = web.AppRunner(build_app(node, dashboard=False))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        address.append(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}")
        served.set()
        await stop.wait()
        await runner.cleanup()
        await ledger.close()

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()))
    thread.start()
    try:
        assert served.wait(30)
        for key, name in ((worker, "w"), (stranger, "s")):
            keystore_for(tmp_path, name, key)
        base = ["--rpc-url", anvil.url, "--contract", chain.address, "--validator", address[0]]
        assert main(["claim", *base, "--keystore", str(tmp_path / "s.json")]) == 1
        assert f"no reward proof for {stranger.address} in epoch 1" in capsys.readouterr().err
        assert f"claimed 0.000000000000004321 ETH (4321 wei) for {worker.address}" in run(capsys, "claim", *base, "--keystore", str(tmp_path / "w.json"))
        assert chain.claimed_of(worker.address) == 4_321
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
    assert main(["claim", *base, "--keystore", str(tmp_path / "w.json")]) == 1  # the validator is gone
    assert f"cannot fetch a reward proof from {address[0]}" in capsys.readouterr().err


def test_deploy_keep_existing_and_top_ups_make_a_set_up_safe_to_run_again(anvil, tmp_path, capsys, monkeypatch):
    """Issue 18, item 11: docker-compose's set-up runs on every `up`. `chain deploy --keep-existing` keeps the
    contract chain.json remembers while the chain has it and deploys anew on a chain that restarted empty;
    `stake --top-up` and `chain fund --top-up` send only what is missing."""
    from ledger.chain.embedded import AnvilNode

    monkeypatch.setenv("STAGEWISE_KEYSTORE_PASSWORD", PASSWORD)
    monkeypatch.setenv("STAGEWISE_RPC_URL", anvil.url)
    owner, worker, stranger = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    owner_ks, worker_ks = keystore_for(tmp_path, "owner", owner), keystore_for(tmp_path, "worker", worker)
    stranger_ks = keystore_for(tmp_path, "stranger", stranger)
    for address in (owner.address, stranger.address):
        assert "sent 5 ETH" in run(capsys, "chain", "fund", address, "5", "--top-up")
    assert f"{owner.address} holds 5 ETH" in run(capsys, "chain", "fund", owner.address, "5", "--top-up")
    assert "nothing sent" in run(capsys, "chain", "fund", owner.address, "2", "--top-up")
    assert "sent 3 ETH" in run(capsys, "chain", "fund", worker.address, "3", "--top-up")

    deploy = ["chain", "deploy", "--keep-existing", "--keystore", str(owner_ks)]
    assert run(capsys, *deploy).startswith("deployed StagewiseStaking at 0x")
    contract = json.loads((tmp_path / "home" / "chain.json").read_text())["contract"]
    out = run(capsys, *deploy)
    assert out.startswith(f"StagewiseStaking already deployed at {contract} on chain 31337") and "nothing sent" in out
    assert main(["chain", "deploy", "--keep-existing", "--keystore", str(stranger_ks)]) == 1  # not its owner
    err = capsys.readouterr().err.strip()
    assert f"is owned by {owner.address}, not by the keystore's {stranger.address}" in err and "\n" not in err

    assert f"staked 1 ETH ({10**18} wei)" in run(capsys, "stake", "1", "--top-up", "--keystore", str(worker_ks))
    assert "nothing staked" in run(capsys, "stake", "1", "--top-up", "--keystore", str(worker_ks))
    out = run(capsys, "chain", "stake", "1.5", "--top-up", "--keystore", str(worker_ks))
    assert "staked 0.5 ETH" in out and "active stake 1.5 ETH" in out
    assert "active 1.5 ETH" in run(capsys, "chain", "info", worker.address)

    with AnvilNode(accounts=2) as fresh:  # the chain restarted without its state: chain.json points at nothing
        monkeypatch.setenv("STAGEWISE_RPC_URL", fresh.url)
        run(capsys, "chain", "fund", owner.address, "5", "--top-up")
        out = run(capsys, *deploy)
        assert out.startswith("deployed StagewiseStaking at 0x") and f"the remembered {contract} has no code" in out
        remembered = json.loads((tmp_path / "home" / "chain.json").read_text())
        assert remembered["rpc_url"] == fresh.url
        assert ChainClient.connect(fresh.url, address=remembered["contract"]).owner() == owner.address


def test_deploy_sets_the_validator_set_and_its_threshold(anvil, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("STAGEWISE_KEYSTORE_PASSWORD", PASSWORD)
    monkeypatch.setenv("STAGEWISE_RPC_URL", anvil.url)
    owner_ks = keystore_for(tmp_path, "owner", SigningKey(bytes(anvil.keys[0].key)))
    validators = [SigningKey.generate().address for _ in range(3)]
    flags = [flag for address in validators for flag in ("--validator", address)]
    assert main(["chain", "deploy", "--keystore", str(owner_ks), *flags[:4], "--threshold", "3"]) == 1
    assert "--threshold 3: between 1 and the 2 validator(s) given" in capsys.readouterr().err
    out = run(capsys, "chain", "deploy", "--keystore", str(owner_ks), *flags, "--threshold", "2")
    assert "2 of them sign each slash and anchor" in out
    chain = ChainClient.connect(anvil.url, address=json.loads((tmp_path / "home" / "chain.json").read_text())["contract"])
    assert (chain.threshold(), chain.validator_count()) == (2, 3)
    assert "2 of 3 validators sign a slash or an anchor" in run(capsys, "chain", "info")
    assert all(chain.is_validator(address) for address in validators)
