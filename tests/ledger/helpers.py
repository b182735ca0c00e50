"""Small builders for ledger tests: addresses, job ids and evidence hashes from integers."""

from ledger.journal import checksum


def address(i: int) -> str:
    return checksum("0x" + f"{i:040x}")


def h32(i: int) -> str:
    return "0x" + f"{i:064x}"
