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
