"""`stagewise ledger ...` against a real database, including an audit that catches a tampered row."""

import asyncio
import json

import pytest
from sqlalchemy import text

from ledger import drift, journal
from ledger.store import Ledger
from node.cli.main import main
from tests.ledger.helpers import address, h32

A, B = address(1), address(2)


async def _fill(url: str) -> None:
    async with await Ledger.open(url) as ledger:
        await ledger.set_stake(A, 32 * 10**18, block=1)
        await ledger.append(
            [journal.reward(A if i % 2 else B, 10**15 * (i + 1), job_id=h32(i), stage=0, work_units=100) for i in range(6)]
        )
        await ledger.close_epoch()
        await ledger.append([journal.slash(B, 10**17, evidence_hash=h32(99), job_id=h32(7), stage=1, data={"exp": 41})])


async def _sql(url: str, statement: str) -> None:
    async with await Ledger.open(url) as ledger:
        async with ledger.transaction() as tx:
            await tx.conn.execute(text(statement))


@pytest.fixture
def filled(db_url, monkeypatch):
    asyncio.run(_fill(db_url))
    monkeypatch.setenv("STAGEWISE_DB", db_url)
    return db_url


def test_verify_passes_on_an_untouched_ledger(filled, capsys):
    assert main(["ledger", "verify"]) == 0
    assert "ok: 7 journal entries and 1 epochs check out" in capsys.readouterr().out


def test_verify_names_the_row_edited_behind_the_stores_back(filled, capsys):
    # Someone with database access doubles a reward, keeping the column's storage format.
    amount = "'" + f"{8 * 10**15:078d}" + "'" if filled.startswith("sqlite") else str(8 * 10**15)
    asyncio.run(_sql(filled, f"UPDATE journal SET amount = {amount} WHERE seq = 4"))
    assert main(["ledger", "verify", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["first_bad_seq"] == 4
    assert "entry 4 (reward" in report["problem"] and "hash to" in report["problem"]
    assert main(["ledger", "verify"]) == 1
    assert "MISMATCH at entry 4" in capsys.readouterr().out


def test_verify_notices_a_deleted_entry_and_a_forged_epoch_root(filled, capsys):
    asyncio.run(_sql(filled, f"UPDATE epochs SET rewards_root = '{h32(5)}' WHERE number = 1"))
    assert main(["ledger", "verify"]) == 1
    assert "epoch 1: rewards root" in capsys.readouterr().out
    asyncio.run(_sql(filled, f"UPDATE epochs SET rewards_root = '{h32(5)}' WHERE number = 1"))
    asyncio.run(_sql(filled, "DELETE FROM journal WHERE seq = 2"))
    assert main(["ledger", "verify"]) == 1
    assert "entry 2 is missing" in capsys.readouterr().out


def test_reading_commands(filled, capsys):
    assert main(["ledger", "leaderboard", "--json"]) == 0
    board = json.loads(capsys.readouterr().out)
    assert [w["address"] for w in board["items"]] == [A, B] and board["items"][0]["rank"] == 1
    assert main(["ledger", "slashes"]) == 0
    out = capsys.readouterr().out
    assert B in out and '"exp":41' in out and "1 of 1 slashes" in out
    assert all(len(line) <= 220 for line in out.splitlines())  # issue 18, item 10: a summary, not ~700 characters
    assert main(["ledger", "worker", A.lower()]) == 0
    out = capsys.readouterr().out
    assert "rank 1" in out and "stake 32 ETH" in out and "3 of 3 entries" in out
    assert main(["ledger", "epochs", "--close"]) == 0
    assert "closed epoch 2 over entries 7..7" in capsys.readouterr().out
    assert main(["ledger", "proof", A]) == 0
    proof = json.loads(capsys.readouterr().out)
    assert proof["epoch"] == 2 and int(proof["cumulative"]) == 10**15 * (2 + 4 + 6)


def test_a_worker_flagged_by_the_cross_job_test_shows_its_flag(filled, capsys):
    async def flag():
        async with await Ledger.open(filled) as ledger, ledger.transaction() as tx:
            await drift.record_flag(tx.conn, drift.Flag(h32(9), A, h32(1), "bf16", 1, 9.4, 8, 1_700_000_000_000))

    asyncio.run(flag())
    assert main(["ledger", "worker", A]) == 0
    assert f"drift flag: job {h32(9)} stage 1 (bf16, over 8 jobs)" in capsys.readouterr().out
    assert main(["ledger", "worker", A, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["drift_flags"][0]["jobs"] == 8


def test_user_errors_are_one_line(filled, capsys):
    assert main(["ledger", "worker", "0xnot-an-address"]) == 1
    assert "not an Ethereum address" in capsys.readouterr().err
    assert main(["ledger", "worker", address(77)]) == 1
    assert "no worker" in capsys.readouterr().err


def test_an_unreachable_database_is_one_line_without_the_password(capsys, monkeypatch):
    monkeypatch.setenv("STAGEWISE_DB", "")  # --db writes the variable; this puts it back afterwards
    assert main(["--db", "postgresql://postgres:hunter2@127.0.0.1:1/ledger", "ledger", "verify"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot open the ledger at postgresql+asyncpg://postgres:***@127.0.0.1:1/ledger")
    assert "hunter2" not in err and "Traceback" not in err


def test_reading_without_a_ledger_says_there_is_none_and_creates_nothing(tmp_path, capsys, monkeypatch):
    # Issue 18, item 8: `ledger leaderboard` without --db made an empty SQLite ledger and answered "0 workers".
    monkeypatch.setenv("STAGEWISE_DB", "")
    missing = tmp_path / "nowhere" / "ledger.db"
    for command in (["ledger", "leaderboard"], ["ledger", "slashes"], ["validator", "evidence", "0x" + "11" * 32]):
        assert main(["--db", f"sqlite:///{missing}", *command]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: there is no ledger at {missing}") and "--db" in err and err.count("\n") == 1
    assert not missing.exists() and not missing.parent.exists()
    assert main(["--db", f"sqlite:///{tmp_path / 'new.db'}", "ledger", "migrate"]) == 0  # making one is explicit
    assert (tmp_path / "new.db").exists()


def test_a_fresh_process_reading_without_a_ledger_prints_the_one_line_and_nothing_else(tmp_path):
    # In a new process the ledger's modules (and alembic with them) are first imported after logging is set
    # up: alembic's INFO lines about its plugins came before the error, seven of them, on every ledger command.
    import subprocess
    import sys

    missing = tmp_path / "nowhere" / "ledger.db"
    argv = [sys.executable, "-m", "node.cli.main", "--data-dir", str(tmp_path / "home"), "--db", f"sqlite:///{missing}",
            "ledger", "worker", "0x" + "11" * 20]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: there is no ledger at {missing}") and result.stderr.count("\n") == 1, result.stderr


def test_the_database_password_comes_from_a_file(pg_url, tmp_path, monkeypatch, capsys):
    """Issue 18, item 11: docker-compose gives the ledger's password as a secret file
    (STAGEWISE_DB_PASSWORD_FILE), never in the URL, the environment or `ps`."""
    from ledger.database_url import DatabaseUrlError, with_password_file

    secret = tmp_path / "postgres-password"
    secret.write_text("p@ss:/word\n")
    assert with_password_file("postgresql://stagewise@db:5432/ledger", secret) == (
        "postgresql://stagewise:p%40ss%3A%2Fword@db:5432/ledger"
    )
    assert with_password_file("postgresql://u@db/l", None) == "postgresql://u@db/l"
    for url, refusal in [("postgresql://db/l", "names no user"), ("postgresql://u:x@db/l", "password of its own"),
                         ("sqlite:///ledger.db", "SQLite")]:
        with pytest.raises(DatabaseUrlError, match=refusal):
            with_password_file(url, secret)

    monkeypatch.setenv("STAGEWISE_DB", pg_url)  # the test server's URL names a user and no password
    monkeypatch.setenv("STAGEWISE_DB_PASSWORD_FILE", str(secret))
    assert main(["ledger", "verify"]) == 0
    assert "ok: 0 journal entries" in capsys.readouterr().out
    monkeypatch.setenv("STAGEWISE_DB_PASSWORD_FILE", str(tmp_path / "missing"))
    assert main(["ledger", "verify"]) == 1
    err = capsys.readouterr().err.strip()
    assert "cannot read the database password file" in err and "\n" not in err
