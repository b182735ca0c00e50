"""The worker reads its stake from the real contract and says exactly how much is missing."""

import pytest

from node.cli.main import main
from node.worker.errors import WorkerError
from node.worker.stake import read_stake


def test_unstaked_key_is_told_what_is_missing(served_chain, worker_key):
    chain, url = served_chain
    status = read_stake(url, chain.address, worker_key.address, required_wei=10**18)
    assert status.staked_wei == 0 and not status.enough
    assert status.missing_wei == 10**18
    message = status.explain()
    assert "no stake" in message and "1 ETH (1000000000000000000 wei) more is needed" in message
    assert f"stagewise stake 1000000000000000000wei --keystore KEYSTORE --rpc-url {url} --contract {chain.address}" in message


def test_partial_and_full_stake(served_chain, worker_key):
    chain, url = served_chain
    chain.fund(worker_key.address, 10**18)
    chain.stake(worker_key, 3 * 10**17)
    partial = read_stake(url, chain.address, worker_key.address, required_wei=5 * 10**17)
    assert partial.staked_wei == 3 * 10**17 and partial.missing_wei == 2 * 10**17
    assert "only 0.3 ETH" in partial.explain()
    full = read_stake(url, chain.address, worker_key.address, required_wei=2 * 10**17)
    assert full.enough and full.chain_id == chain.chain_id and full.contract == chain.address


def test_unreachable_chain_is_one_clear_error(worker_key):
    with pytest.raises(WorkerError, match="cannot reach the chain at http://127.0.0.1:9"):
        read_stake("http://127.0.0.1:9", "0x" + "11" * 20, worker_key.address, 1)


def test_no_contract_at_that_address(served_chain, worker_key):
    _, url = served_chain
    with pytest.raises(WorkerError, match="no staking contract at .*: no code there; pass as --contract the address `stagewise chain deploy` printed"):
        read_stake(url, "0x" + "11" * 20, worker_key.address, 1)


def test_worker_run_wrong_password_exits_with_one_line(keystore, tmp_path, capsys):
    path, _ = keystore
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("nope\n")
    code = main(["worker", "run", "--keystore", str(path), "--password-file", str(wrong), "--validator", "http://127.0.0.1:9", "--model-dir", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: the password in {wrong} does not open keystore {path}; ") and "--password-file" in err


def test_worker_run_malformed_keystore(tmp_path, capsys):
    path = tmp_path / "broken.json"
    path.write_text('{"version": 3}')
    assert main(["worker", "run", "--keystore", str(path), "--validator", "http://127.0.0.1:9", "--model-dir", str(tmp_path)]) == 1
    assert "is malformed" in capsys.readouterr().err


def test_worker_run_unreachable_validator(keystore, capsys, tmp_path):
    path, password = keystore
    code = main(["worker", "run", "--keystore", str(path), "--password-file", str(password), "--validator", "http://127.0.0.1:9",
                 "--model-dir", str(tmp_path), "--validator-wait", "0"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the validator at http://127.0.0.1:9") and err.count("\n") == 1
    assert "gave up after waiting 0 s (--validator-wait)" in err


def test_worker_run_without_validator(keystore, capsys, monkeypatch):
    monkeypatch.delenv("STAGEWISE_VALIDATOR_URL", raising=False)
    path, password = keystore
    assert main(["worker", "run", "--keystore", str(path), "--password-file", str(password)]) == 1
    assert "no validator" in capsys.readouterr().err


def test_worker_run_without_a_model(keystore, capsys):
    path, password = keystore
    code = main(["worker", "run", "--keystore", str(path), "--password-file", str(password), "--validator", "http://127.0.0.1:9"])
    assert code == 1
    assert "no model: pass --model-dir" in capsys.readouterr().err


def test_capacity_sizes():
    from node.cli.worker import parse_size

    assert parse_size("8GiB") == 8 << 30 and parse_size("512m") == 512 << 20 and parse_size("1024") == 1024
    with pytest.raises(Exception):
        parse_size("lots")


def test_the_validator_set_is_read_from_the_contract(served_chain, worker_key):
    from node.worker.stake import read_validator_role

    chain, url = served_chain
    assert read_validator_role(url, chain.address, chain.dev_keys[0].address)  # the owner deployed it as one
    assert not read_validator_role(url, chain.address, worker_key.address)


def test_a_worker_measures_the_layer_tokens_per_second_it_offers(tmp_path):
    import time

    from node.pipeline.throughput import measure_layer_tokens_per_s
    from node.pipeline.tiny import tiny_model_dir

    model_dir = tiny_model_dir("llama", seed=3, path=tmp_path / "tiny", num_layers=2)
    started = time.perf_counter()
    rate = measure_layer_tokens_per_s(model_dir, seconds=60, most_steps=8)  # 8 steps end it long before 60 s
    elapsed = time.perf_counter() - started
    assert elapsed < 30 and rate >= 8 / elapsed  # 8 steps in (less than) the whole call's time
    assert measure_layer_tokens_per_s(model_dir, seconds=0.0) > 0  # always at least one timed step
