"""`stagewise wallet new | address | import`: make, show and bring in the key a worker stakes with."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from types import SimpleNamespace

import click

from node import wallet
from node.cli.options import PATH, arguments, help_group


def _keystore_option(help_extra: str = ""):
    return click.option(
        "--keystore", type=PATH, show_default=f"<data dir>/keys/{wallet.DEFAULT_KEYSTORE_NAME}",
        help=f"keystore file{help_extra}",
    )


_password_option = click.option(
    "--password-file", type=PATH, help=f"read the password from this file (else ${wallet.PASSWORD_ENV}, else a prompt)"
)
_scrypt_option = click.option(
    "--scrypt-n", type=int, default=wallet.DEFAULT_SCRYPT_N,
    help="scrypt cost parameter, a power of two (lower only for throwaway keys)",
)


@help_group("wallet", short_help="create, import and show worker keys (keystore v3 files)")
def wallet_group() -> None:
    """Worker keys live in Ethereum keystore v3 files (scrypt), by default <data dir>/keys/worker.json.
    Passwords come from --password-file, the environment variable STAGEWISE_KEYSTORE_PASSWORD, or a hidden
    prompt. Private keys are never printed."""


@wallet_group.command("new", short_help="create a fresh key and write it to a new keystore file")
@_keystore_option()
@_password_option
@_scrypt_option
def new_command(**_: object) -> int:
    """Create a fresh key and write it to a new keystore file."""
    return cmd_new(arguments())


@wallet_group.command("address", short_help="print the address of a keystore (no password needed; --check: and "
                      "prove the password opens it)")
@_keystore_option()
@click.option("--check", is_flag=True, help="also decrypt the keystore, proving the password opens it")
@_password_option
def address_command(**_: object) -> int:
    """Print the address of a keystore (no password needed)."""
    return cmd_address(arguments())


@wallet_group.command(
    "import", short_help="import an existing keystore file or a raw private key into a new keystore"
)
@click.argument("source", required=False, type=PATH)
@click.option("--private-key-file", type=PATH, help="a file holding the hex private key to encrypt")
@_keystore_option(" to write")
@_password_option
@_scrypt_option
def import_command(**_: object) -> int:
    """Import SOURCE, a keystore v3 file (checked by decrypting it, then copied unchanged), or, without
    SOURCE, a hex private key read from --private-key-file or a hidden prompt and encrypted into a new
    keystore."""
    return cmd_import(arguments())


COMMANDS = [wallet_group]


def _keystore_path(args: SimpleNamespace) -> Path:
    return args.keystore if args.keystore is not None else wallet.default_keystore_path()


def _fail(error: wallet.WalletError):
    from node.errors import CommandError

    return CommandError(str(error))


def cmd_new(args: SimpleNamespace) -> int:
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


def cmd_address(args: SimpleNamespace) -> int:
    try:
        keystore = wallet.load_keystore(_keystore_path(args))
        address = keystore.address
        if args.check or address is None:  # a keystore without an address field needs its password
            address = wallet.open_keystore(keystore, args.password_file).address
    except wallet.WalletError as error:
        raise _fail(error) from None
    if args.check:  # say what was proven, not only the address that needs no password
        print(f"{address}: the password {wallet.password_source(args.password_file)} opens keystore {keystore.path}")
    else:
        print(address)
    return 0


def cmd_import(args: SimpleNamespace) -> int:
    path = _keystore_path(args)
    try:
        if args.source is not None and args.private_key_file is not None:
            raise wallet.WalletError("give either a keystore SOURCE or --private-key-file, not both")
        if path.exists():
            raise wallet.WalletError(f"{path} already exists; choose another --keystore path (nothing was written)")
        if args.source is not None:
            source = wallet.load_keystore(args.source)
            key = wallet.open_keystore(source, args.password_file)
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
