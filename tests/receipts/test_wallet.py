"""Keystores: create, import, unlock; passwords from a file or the environment; no key ever printed."""

import json

import pytest
from eth_account import Account

from node import wallet
from node.cli.main import main
from node.protocol.signing import SigningKey

FAST_SCRYPT = ["--scrypt-n", "1024"]  # keystores for tests: the format is the same, the unlock is cheap


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("STAGEWISE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(wallet.PASSWORD_ENV, raising=False)
    return tmp_path


@pytest.fixture
def password_file(tmp_path):
    path = tmp_path / "password.txt"
    path.write_text("correct horse battery staple\n")
    return path


def test_new_keystore_is_read_by_eth_account(tmp_path, password_file, capsys):
    keystore = tmp_path / "k.json"
    assert main(["wallet", "new", "--keystore", str(keystore), "--password-file", str(password_file), *FAST_SCRYPT]) == 0
    out = capsys.readouterr().out
    document = json.loads(keystore.read_text())
    assert document["version"] == 3 and document["crypto"]["kdf"] == "scrypt"
    secret = Account.decrypt(document, "correct horse battery staple")
    address = Account.from_key(secret).address
    assert address in out
    assert secret.hex() not in out
    assert (keystore.stat().st_mode & 0o777) == 0o600


def test_default_keystore_lives_under_the_data_dir(isolated_home, monkeypatch, capsys):
    monkeypatch.setenv(wallet.PASSWORD_ENV, "from-the-environment")
    assert main(["wallet", "new", *FAST_SCRYPT]) == 0
    path = isolated_home / "home" / "keys" / "worker.json"
    assert path.exists()
    capsys.readouterr()
    assert main(["wallet", "address"]) == 0
    assert capsys.readouterr().out.strip() == wallet.load_keystore(path).address
    assert main(["wallet", "address", "--check"]) == 0
    assert capsys.readouterr().out.strip() == f"{wallet.load_keystore(path).address}: the password in " \
        f"${wallet.PASSWORD_ENV} opens keystore {path}"


def test_address_check_says_the_password_opened_the_keystore(tmp_path, password_file, capsys, monkeypatch):
    # Issue 18, item 10: `--check` printed the address alone, as without it: nothing said the password worked.
    keystore = tmp_path / "k.json"
    address = wallet.create_keystore(keystore, "correct horse battery staple", scrypt_n=1024).address
    assert main(["wallet", "address", "--check", "--keystore", str(keystore), "--password-file", str(password_file)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"{address}: the password in {password_file} opens keystore {keystore}"
    assert "correct horse" not in out


def test_new_never_overwrites_a_keystore(tmp_path, password_file, capsys):
    keystore = tmp_path / "k.json"
    keystore.write_text("precious")
    assert main(["wallet", "new", "--keystore", str(keystore), "--password-file", str(password_file)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert keystore.read_text() == "precious"


def test_wrong_password_is_one_clear_error(tmp_path, password_file, capsys, monkeypatch):
    keystore = tmp_path / "k.json"
    wallet.create_keystore(keystore, "right", scrypt_n=1024)
    monkeypatch.setenv(wallet.PASSWORD_ENV, "wrong")
    assert main(["wallet", "address", "--check", "--keystore", str(keystore)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        f"error: the password in ${wallet.PASSWORD_ENV} does not open keystore {keystore}; give that keystore's "
        f"password with --password-file FILE or {wallet.PASSWORD_ENV}"
    )


@pytest.mark.parametrize(
    "content, problem",
    [
        ("not json", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"version": 4}', "version 4"),
        ('{"version": 3, "address": "zz"}', "invalid address"),
        ('{"version": 3, "address": "' + "11" * 20 + '"}', "missing crypto section"),
    ],
)
def test_malformed_keystore_is_one_clear_error(tmp_path, capsys, content, problem):
    keystore = tmp_path / "k.json"
    keystore.write_text(content)
    assert main(["wallet", "address", "--keystore", str(keystore)]) == 1
    err = capsys.readouterr().err
    assert "malformed" in err or "not JSON" in err
    assert problem in err
    assert "Traceback" not in err


def test_tampered_ciphertext_fails_the_mac(tmp_path):
    path = tmp_path / "k.json"
    wallet.create_keystore(path, "pw", scrypt_n=1024)
    document = json.loads(path.read_text())
    cipher = document["crypto"]["ciphertext"]
    document["crypto"]["ciphertext"] = ("0" if cipher[0] != "0" else "1") + cipher[1:]
    path.write_text(json.dumps(document))
    with pytest.raises(wallet.WalletError, match="does not open keystore"):
        wallet.load_keystore(path).unlock("pw")


def test_a_hostile_scrypt_cost_is_refused_before_any_work(tmp_path):
    path = tmp_path / "k.json"
    wallet.create_keystore(path, "pw", scrypt_n=1024)
    document = json.loads(path.read_text())
    document["crypto"]["kdfparams"]["n"] = 1 << 30
    path.write_text(json.dumps(document))
    with pytest.raises(wallet.WalletError, match="scrypt n"):
        wallet.load_keystore(path)


def test_missing_keystore_says_how_to_make_one(tmp_path, capsys):
    assert main(["wallet", "address", "--keystore", str(tmp_path / "nope.json")]) == 1
    assert "stagewise wallet new" in capsys.readouterr().err


def test_import_a_private_key_without_echoing_it(tmp_path, password_file, capsys):
    key = SigningKey(bytes(range(1, 33)))
    key_file = tmp_path / "key.hex"
    key_file.write_text("0x" + key.secret.hex() + "\n")
    keystore = tmp_path / "imported.json"
    args = ["wallet", "import", "--private-key-file", str(key_file), "--keystore", str(keystore)]
    assert main([*args, "--password-file", str(password_file), *FAST_SCRYPT]) == 0
    out, err = capsys.readouterr()
    assert key.address in out and key.secret.hex() not in out + err
    unlocked = wallet.unlock(keystore, password_file)
    assert unlocked.address == key.address
    assert key.secret.hex() not in repr(unlocked)


def test_import_rejects_a_bad_private_key_without_echoing_it(tmp_path, password_file, capsys):
    key_file = tmp_path / "key.hex"
    key_file.write_text("0x" + "ab" * 31)
    assert main(["wallet", "import", "--private-key-file", str(key_file), "--password-file", str(password_file),
                 "--keystore", str(tmp_path / "k.json")]) == 1
    err = capsys.readouterr().err
    assert "32 bytes" in err and "ab" * 31 not in err
    assert not (tmp_path / "k.json").exists()


def test_import_an_existing_keystore_file(tmp_path, password_file):
    theirs = Account.encrypt(bytes(range(1, 33)), "correct horse battery staple", kdf="scrypt", iterations=1024)
    source = tmp_path / "geth-export.json"
    source.write_text(json.dumps(theirs))
    target = tmp_path / "ours.json"
    assert main(["wallet", "import", str(source), "--keystore", str(target), "--password-file", str(password_file)]) == 0
    assert wallet.unlock(target, password_file).address == Account.from_key(bytes(range(1, 33))).address


def test_no_password_source_without_a_terminal_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["wallet", "new", "--keystore", str(tmp_path / "k.json")]) == 1
    assert wallet.PASSWORD_ENV in capsys.readouterr().err
    assert not (tmp_path / "k.json").exists()


def test_prompted_passwords_must_match(monkeypatch):
    import io

    answers = iter(["one", "two"])

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stdin", Tty())
    with pytest.raises(wallet.WalletError, match="do not match"):
        wallet.read_password(confirm=True, ask=lambda prompt: next(answers))


def test_import_a_keystore_that_does_not_state_its_address(tmp_path, password_file, capsys):
    theirs = Account.encrypt(bytes(range(2, 34)), "correct horse battery staple", kdf="scrypt", iterations=1024)
    theirs.pop("address", None)
    source = tmp_path / "no-address.json"
    source.write_text(json.dumps(theirs))
    expected = Account.from_key(bytes(range(2, 34))).address
    assert main(["wallet", "address", "--keystore", str(source), "--password-file", str(password_file)]) == 0
    assert capsys.readouterr().out.strip() == expected
    target = tmp_path / "ours.json"
    assert main(["wallet", "import", str(source), "--keystore", str(target), "--password-file", str(password_file)]) == 0
    assert wallet.load_keystore(target).address == expected
