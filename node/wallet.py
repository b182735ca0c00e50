"""A worker's key at rest: Ethereum keystore v3 files (scrypt), and where their passwords come from.

The keystore format is the one geth, MetaMask exports and eth-account read and write, so a worker can
bring the key it already stakes with. The private key only ever exists decrypted inside a
`node.protocol.signing.SigningKey`, whose repr shows the address and never the secret; no function here prints
or logs a key or a password.

Passwords come, in this order, from a file (`--password-file`), the environment variable
`STAGEWISE_KEYSTORE_PASSWORD`, or a hidden prompt on a terminal. Nothing reads a password from a command
line argument: it would end up in shell history and in `ps`.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from eth_utils import is_hex_address, to_checksum_address

from ledger import json_input
from ledger.errors import InvalidInput
from node import settings
from node.protocol.signing import SigningKey

PASSWORD_ENV = settings.KEYSTORE_PASSWORD.name
DEFAULT_KEYSTORE_NAME = "worker.json"
# geth's "standard" scrypt cost: about a second and 256 MiB to unlock, which is the point of a keystore.
DEFAULT_SCRYPT_N = 1 << 18
# A keystore from the outside cannot make us spend more than this (n = 2**20 is 1 GiB of memory).
MAX_SCRYPT_N = 1 << 20
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class WalletError(InvalidInput):
    """A keystore or password problem the user can fix; the message says which and how."""


@dataclass(frozen=True)
class Keystore:
    """A parsed keystore v3 file: where it is, whose key it holds, and its (still encrypted) JSON."""

    path: Path
    address: str | None  # None: a keystore that does not state its address (it is known once unlocked)
    document: dict[str, Any]

    def unlock(self, password: str, source: str = "given") -> SigningKey:
        """Decrypt the key. A wrong password and a tampered file both fail the MAC check. `source` says where
        the password came from ("in FILE", "in $VARIABLE", "typed"), for the error; never the password."""
        from eth_keyfile import decode_keyfile_json

        try:
            secret = decode_keyfile_json(self.document, password.encode())
        except ValueError as error:
            if "MAC mismatch" in str(error):
                raise WalletError(
                    f"the password {source} does not open keystore {self.path}; give that keystore's password with "
                    f"--password-file FILE or {PASSWORD_ENV}"
                ) from None
            raise WalletError(f"keystore {self.path} cannot be decrypted: {error}") from None
        except Exception as error:  # eth-keyfile raises KeyError/TypeError on odd field contents
            raise WalletError(f"keystore {self.path} is malformed: {type(error).__name__} {error}") from None
        try:
            key = SigningKey(bytes(secret))
        except ValueError:
            raise WalletError(f"keystore {self.path} is malformed: the decrypted key is not 32 bytes") from None
        if self.address is not None and key.address != self.address:
            raise WalletError(f"keystore {self.path} decrypts to {key.address}, not its stated address {self.address}")
        return key


def keys_dir() -> Path:
    """`<data dir>/keys`, private to the user."""
    path = settings.data_dir() / "keys"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def default_keystore_path() -> Path:
    return keys_dir() / DEFAULT_KEYSTORE_NAME


def encrypt_key(key: SigningKey, password: str, scrypt_n: int = DEFAULT_SCRYPT_N) -> dict[str, Any]:
    """A keystore v3 document (scrypt, aes-128-ctr) for `key`."""
    from eth_keyfile import create_keyfile_json

    if not password:
        raise WalletError("refusing an empty keystore password")
    if scrypt_n < 2 or scrypt_n & (scrypt_n - 1) or scrypt_n > MAX_SCRYPT_N:
        raise WalletError(f"scrypt n must be a power of two in [2, {MAX_SCRYPT_N}]")
    document = create_keyfile_json(key.secret, password.encode(), kdf="scrypt", iterations=scrypt_n)
    document["address"] = key.address[2:].lower()
    return document


def write_keystore(path: Path, document: dict[str, Any]) -> None:
    """Write atomically with mode 0600; never overwrite an existing file (that would lose a key)."""
    path = Path(path)
    if path.exists():
        raise WalletError(f"{path} already exists; choose another --keystore path (nothing was written)")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keystore-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        # link() fails if the target appeared meanwhile, where rename() would silently replace it.
        os.link(tmp, path)
    except FileExistsError:
        raise WalletError(f"{path} already exists; choose another --keystore path (nothing was written)") from None
    finally:
        os.unlink(tmp)


def create_keystore(path: Path, password: str, key: SigningKey | None = None, scrypt_n: int = DEFAULT_SCRYPT_N) -> Keystore:
    """Encrypt `key` (a fresh one by default) into a new keystore file at `path`."""
    key = key or SigningKey.generate()
    document = encrypt_key(key, password, scrypt_n)
    write_keystore(Path(path), document)
    return Keystore(Path(path), key.address, document)


def load_keystore(path: Path) -> Keystore:
    """Read and check the structure of a keystore v3 file, without decrypting it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise WalletError(f"no keystore at {path} (create one with `stagewise wallet new`)") from None
    except OSError as error:
        raise WalletError(f"cannot read keystore {path}: {error.strerror}") from None
    try:
        document = json_input.loads(text)
    except json_input.JsonInputError:
        raise WalletError(f"keystore {path} is not JSON") from None
    problem = _keystore_problem(document)
    if problem:
        raise WalletError(f"keystore {path} is malformed: {problem}")
    address = document.get("address")
    if address is None:
        return Keystore(path, None, document)
    return Keystore(path, to_checksum_address("0x" + address.lower().removeprefix("0x")), document)


def _keystore_problem(document: Any) -> str | None:
    """What is wrong with a keystore v3 document, or None. Checked before any scrypt work is spent on it."""
    if not isinstance(document, dict):
        return "not a JSON object"
    if document.get("version") != 3:
        return f"version {document.get('version')!r}, expected 3"
    address = document.get("address")
    if address is not None and not (isinstance(address, str) and is_hex_address("0x" + address.lower().removeprefix("0x"))):
        return "invalid address"
    crypto = document.get("crypto", document.get("Crypto"))
    if not isinstance(crypto, dict):
        return "missing crypto section"
    for field in ("ciphertext", "mac"):
        if not _is_hex(crypto.get(field)):
            return f"crypto.{field} is not hex"
    if crypto.get("cipher") != "aes-128-ctr":
        return f"unsupported cipher {crypto.get('cipher')!r}"
    if not (isinstance(crypto.get("cipherparams"), dict) and _is_hex(crypto["cipherparams"].get("iv"))):
        return "crypto.cipherparams.iv is not hex"
    params = crypto.get("kdfparams")
    if not isinstance(params, dict):
        return "missing crypto.kdfparams"
    if crypto.get("kdf") == "scrypt":
        n = params.get("n")
        if not (isinstance(n, int) and 2 <= n <= MAX_SCRYPT_N):
            return f"scrypt n {n!r} out of range [2, {MAX_SCRYPT_N}]"
        if not all(isinstance(params.get(k), int) and 0 < params[k] <= 64 for k in ("r", "p", "dklen")):
            return "scrypt r, p and dklen must be small positive integers"
    elif crypto.get("kdf") == "pbkdf2":
        if not (isinstance(params.get("c"), int) and 0 < params["c"] <= 10_000_000):
            return "pbkdf2 iteration count out of range"
    else:
        return f"unsupported kdf {crypto.get('kdf')!r}"
    if not _is_hex(params.get("salt")):
        return "kdf salt is not hex"
    return None


def _is_hex(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        return False
    return True


def read_password(
    password_file: str | os.PathLike | None = None,
    *,
    confirm: bool = False,
    prompt: str = "Keystore password: ",
    ask: Callable[[str], str] = getpass.getpass,
) -> str:
    """The password from a file, else `STAGEWISE_KEYSTORE_PASSWORD`, else a hidden prompt on a terminal.

    A password file may end with one newline, which is not part of the password.
    """
    if password_file is not None:
        try:
            password = Path(password_file).read_text().removesuffix("\n").removesuffix("\r")
        except OSError as error:
            raise WalletError(f"cannot read password file {password_file}: {error.strerror}") from None
    elif settings.KEYSTORE_PASSWORD.get():
        password = settings.KEYSTORE_PASSWORD.get()
    elif sys.stdin is not None and sys.stdin.isatty():
        password = ask(prompt)
        if confirm and ask("Repeat password: ") != password:
            raise WalletError("the passwords do not match")
    else:
        raise WalletError(f"no password: pass --password-file, set {PASSWORD_ENV}, or run in a terminal")
    if not password:
        raise WalletError("the password is empty")
    return password


def parse_private_key(text: str) -> SigningKey:
    """A hex private key (with or without 0x) as typed or pasted; the error never echoes the input."""
    value = text.strip().removeprefix("0x").removeprefix("0X")
    try:
        secret = bytes.fromhex(value)
    except ValueError:
        raise WalletError("the private key is not hex") from None
    if len(secret) != 32:
        raise WalletError(f"a private key is 32 bytes (64 hex digits), got {len(secret)} bytes")
    if not 0 < int.from_bytes(secret, "big") < SECP256K1_ORDER:
        raise WalletError("the private key is outside the secp256k1 range")
    return SigningKey(secret)


def unlock(path: Path, password_file: str | os.PathLike | None = None) -> SigningKey:
    """Load a keystore and decrypt it with the password from `read_password`: what a worker does on start."""
    return open_keystore(load_keystore(path), password_file)


def open_keystore(keystore: Keystore, password_file: str | os.PathLike | None = None) -> SigningKey:
    """Decrypt `keystore` with the password from `read_password`; a wrong one says where it came from."""
    password = read_password(password_file, prompt=f"Password for {keystore.address or keystore.path}: ")
    return keystore.unlock(password, password_source(password_file))


def password_source(password_file: str | os.PathLike | None = None) -> str:
    """Where `read_password` takes the password from, in words for an error message."""
    if password_file is not None:
        return f"in {password_file}"
    if settings.KEYSTORE_PASSWORD.get():
        return f"in ${PASSWORD_ENV}"
    return "typed"
