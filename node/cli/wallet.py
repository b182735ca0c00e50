"""`stagewise wallet new | address | import`: make, show and bring in the key a worker stakes with."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from node import wallet


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "wallet",
        help="create, import and show worker keys (keystore v3 files)",
        description=(
            "Worker keys live in Ethereum keystore v3 files (scrypt), by default "
            "<data dir>/keys/worker.json. Passwords come from --password-file, the environment variable "
            f"{wallet.PASSWORD_ENV}, or a hidden prompt. Private keys are never printed."
        ),
    )
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)
    commands = parser.add_subparsers(title="wallet commands", metavar="COMMAND")

    new = commands.add_parser("new", help="create a fresh key and write it to a new keystore file")
    _add_keystore_arg(new)
    _add_password_arg(new)
    _add_scrypt_arg(new)
    new.set_defaults(func=cmd_new)

    address = commands.add_parser("address", help="print the address of a keystore (no password needed)")
    _add_keystore_arg(address)
    address.add_argument(
        "--check", action="store_true", help="also decrypt the keystore, proving the password opens it"
    )
    _add_password_arg(address)
    address.set_defaults(func=cmd_address)

    imported = commands.add_parser(
        "import",
        help="import an existing keystore file or a raw private key into a new keystore",
        description=(
            "Import SOURCE, a keystore v3 file (checked by decrypting it, then copied unchanged), or, without "
            "SOURCE, a hex private key read from --private-key-file or a hidden prompt and encrypted into a new "
            "keystore."
        ),
    )
    imported.add_argument("source", nargs="?", type=Path, help="a keystore v3 JSON file to import")
    imported.add_argument("--private-key-file", type=Path, help="a file holding the hex private key to encrypt")
    _add_keystore_arg(imported, help_extra=" to write")
    _add_password_arg(imported)
    _add_scrypt_arg(imported)
    imported.set_defaults(func=cmd_import)


def _add_keystore_arg(parser: argparse.ArgumentParser, help_extra: str = "") -> None:
    parser.add_argument(
        "--keystore", type=Path, help=f"keystore file{help_extra} (default <data dir>/keys/{wallet.DEFAULT_KEYSTORE_NAME})"
    )


def _add_password_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-file", type=Path, help=f"read the password from this file (else ${wallet.PASSWORD_ENV}, else a prompt)"
    )


def _add_scrypt_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scrypt-n",
        type=int,
        default=wallet.DEFAULT_SCRYPT_N,
        help=f"scrypt cost parameter, a power of two (default {wallet.DEFAULT_SCRYPT_N}; lower only for throwaway keys)",
    )


def _keystore_path(args: argparse.Namespace) -> Path:
    return args.keystore if args.keystore is not None else wallet.default_keystore_path()


def _fail(error: wallet.WalletError):
    from node.cli.main import CommandError

    return CommandError(str(error))


def cmd_new(args: argparse.Namespace) -> int:
    path = _keystore_path(args)
    try:
        if path.exists():  # checked before asking for a password nobody will use
            raise wallet.WalletError(f"{path} already exists; choose another --keystore path (nothing was written)")
        password = wallet.read_password(args.password_file, confirm=True, prompt="New keystore password: ")
        keystore = wallet.create_keystore(path, password, scrypt_n=args.scrypt_n)
    except wallet.WalletError as error:
        raise _fail(error) from None
    print(f"address:  {keystore.address}")
    print(f"keystore: {keystore.path}")
    print("Back up the keystore file and its password: without both, the stake and rewards of this key are lost.")
    return 0


def cmd_address(args: argparse.Namespace) -> int:
    try:
        keystore = wallet.load_keystore(_keystore_path(args))
        address = keystore.address
        if args.check or address is None:  # a keystore without an address field needs its password
            address = keystore.unlock(wallet.read_password(args.password_file)).address
    except wallet.WalletError as error:
        raise _fail(error) from None
    print(address)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    path = _keystore_path(args)
    try:
        if args.source is not None and args.private_key_file is not None:
            raise wallet.WalletError("give either a keystore SOURCE or --private-key-file, not both")
        if path.exists():
            raise wallet.WalletError(f"{path} already exists; choose another --keystore path (nothing was written)")
        if args.source is not None:
            source = wallet.load_keystore(args.source)
            key = source.unlock(wallet.read_password(args.password_file, prompt=f"Password for {source.address or source.path}: "))
            address = key.address
            wallet.write_keystore(path, {**source.document, "address": address[2:].lower()})
        else:
            key = wallet.parse_private_key(_read_private_key(args.private_key_file))
            password = wallet.read_password(args.password_file, confirm=True, prompt="New keystore password: ")
            address = wallet.create_keystore(path, password, key=key, scrypt_n=args.scrypt_n).address
    except wallet.WalletError as error:
        raise _fail(error) from None
    print(f"address:  {address}")
    print(f"keystore: {path}")
    return 0


def _read_private_key(private_key_file: Path | None) -> str:
    if private_key_file is not None:
        try:
            return private_key_file.read_text()
        except OSError as error:
            raise wallet.WalletError(f"cannot read private key file {private_key_file}: {error.strerror}") from None
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass("Private key (hex, hidden): ")
    raise wallet.WalletError("no private key: give a keystore SOURCE, --private-key-file, or run in a terminal")
