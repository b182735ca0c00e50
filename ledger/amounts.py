"""Amounts of ether as people read them: one formatter for every command (JSON output keeps exact wei)."""

from __future__ import annotations

WEI_PER_ETH = 10**18


def ether(wei: int) -> str:
    """Exact ether with its unit: '1.5 ETH', '10 ETH', '0.0000041 ETH'."""
    whole, fraction = divmod(abs(int(wei)), WEI_PER_ETH)
    text = f"{whole}.{fraction:018d}".rstrip("0").rstrip(".")
    return f"{'-' if wei < 0 else ''}{text} ETH"


def ether_and_wei(wei: int) -> str:
    """'1.5 ETH (1500000000000000000 wei)': the ether to read, the exact wei to copy."""
    return f"{ether(wei)} ({int(wei)} wei)"
