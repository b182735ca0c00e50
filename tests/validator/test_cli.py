"""`stagewise validator run` refuses a setup it cannot serve, with one line that says why."""

import pytest

from node.cli.main import main


def test_run_without_a_model_says_so(capsys):
    assert main(["validator", "run", "--no-chain", "--chain-id", "1", "--contract", "0x" + "ab" * 20]) == 1
    assert "no model to replay" in capsys.readouterr().err


def test_run_needs_exactly_one_chain(capsys, model_dir):
    assert main(["validator", "run", "--model-dir", str(model_dir)]) == 1
    assert "choose one chain" in capsys.readouterr().err
    assert main(["validator", "run", "--model-dir", str(model_dir), "--rpc-url", "http://127.0.0.1:1"]) == 1
    assert "--rpc-url needs --contract" in capsys.readouterr().err


def test_run_rejects_a_directory_that_is_not_a_model(capsys, tmp_path):
    assert main(["validator", "run", "--model-dir", str(tmp_path), "--no-chain"]) == 1
    assert "is not a model directory" in capsys.readouterr().err


def test_verify_evidence_reports_an_unreadable_file(capsys, tmp_path, model_dir):
    path = tmp_path / "evidence.json"
    path.write_text('{"version": 99}')
    assert main(["verify-evidence", str(path), "--model-dir", str(model_dir)]) == 1
    assert "cannot read evidence" in capsys.readouterr().err


def test_replays_take_half_the_cores_unless_told_otherwise():
    from node.launch.validator import replay_threads

    assert [replay_threads(0, cores) for cores in (None, 1, 2, 16)] == [1, 1, 1, 8]
    assert replay_threads(16, 2) == 16  # an operator who gives the whole machine to replays says so


def test_the_admin_token_comes_from_a_file_or_the_environment_and_the_flag_is_warned_about(tmp_path, monkeypatch, caplog):
    import argparse

    from node.cli.main import CommandError
    from node.launch.validator import admin_token

    monkeypatch.delenv("STAGEWISE_ADMIN_TOKEN", raising=False)
    path = tmp_path / "token"
    path.write_text("from-a-file\n")
    assert admin_token(argparse.Namespace(admin_token=None, admin_token_file=path)) == "from-a-file"
    monkeypatch.setenv("STAGEWISE_ADMIN_TOKEN", "from-the-environment")
    assert admin_token(argparse.Namespace(admin_token=None, admin_token_file=None)) == "from-the-environment"
    with caplog.at_level("WARNING", logger="stagewise.validator"):
        assert admin_token(argparse.Namespace(admin_token="on-the-command-line", admin_token_file=None)) == "on-the-command-line"
    assert "`ps` shows it" in caplog.text and "on-the-command-line" not in caplog.text  # the warning names no token
    with pytest.raises(CommandError, match="cannot read the admin token file"):
        admin_token(argparse.Namespace(admin_token=None, admin_token_file=tmp_path / "missing"))


def test_run_takes_the_contract_chain_deploy_remembered_for_the_same_rpc_url(capsys, model_dir, tmp_path):
    """Issue 18, item 11: docker-compose's validator runs with the contract its set-up deployed (the address
    depends on a key made on first run), read from <data dir>/chain.json, and only for the node it was
    deployed on."""
    from node import settings

    settings.remember_chain("http://127.0.0.1:1", 31337, "0x" + "ab" * 20)
    assert main(["validator", "run", "--model-dir", str(model_dir), "--rpc-url", "http://127.0.0.1:2"]) == 1
    err = capsys.readouterr().err
    assert "--rpc-url needs --contract" in err and "chain.json" in err
    assert main(["validator", "run", "--model-dir", str(model_dir), "--rpc-url", "http://127.0.0.1:1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "needs --contract" not in err and "\n" not in err  # past that check: the node at :1 does not answer


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if " INFO " not in line and " WARNING " not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_run_says_what_to_do_about_its_chain_key_and_database(capsys, tmp_path, model_dir, anvil, monkeypatch):
    # Issue 18, item 4: an unreachable --rpc-url, an address that is not the staking contract, a keystore the
    # password does not open and a --db that cannot be opened: one line each that says what to do.
    from ledger.chain.client import ChainClient
    from node import wallet
    from node.protocol.signing import SigningKey

    monkeypatch.delenv("STAGEWISE_VALIDATOR_KEY", raising=False)
    chain = ChainClient.connect(anvil.url, dev_keys=anvil.keys)
    chain.deploy(anvil.keys[0], validators=[anvil.keys[0].address])
    keystore = wallet.create_keystore(tmp_path / "v.json", "right", SigningKey(bytes(anvil.keys[0].key)), scrypt_n=2).path
    monkeypatch.setenv(wallet.PASSWORD_ENV, "wrong")
    run = ["validator", "run", "--model-dir", str(model_dir), "--port", "0"]

    assert main([*run, "--rpc-url", "http://127.0.0.1:9", "--contract", chain.address]) == 1
    line = _one_error_line(capsys)
    assert "cannot reach the chain at http://127.0.0.1:9" in line and "check --rpc-url" in line, line
    assert "HTTPConnectionPool" not in line, line

    empty = "0x" + "11" * 20
    assert main([*run, "--rpc-url", anvil.url, "--contract", empty]) == 1
    line = _one_error_line(capsys)
    assert f"no staking contract at {empty} on chain {chain.chain_id}: no code there; pass as --contract" in line, line

    assert main([*run, "--rpc-url", anvil.url, "--contract", chain.address, "--keystore", str(keystore)]) == 1
    line = _one_error_line(capsys)
    assert f"the password in ${wallet.PASSWORD_ENV} does not open keystore {keystore}; " in line and "wrong" not in line
    assert "--password-file" in line and "-v shows" not in line, line

    monkeypatch.setenv(wallet.PASSWORD_ENV, "right")
    bad_db = f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'ledger.db'}"
    assert main(["--db", bad_db, *run, "--rpc-url", anvil.url, "--contract", chain.address, "--keystore", str(keystore)]) == 1
    line = _one_error_line(capsys)
    assert f"cannot open the ledger at {bad_db}" in line and "check --db" in line, line
