"""One way to show an amount: exact ether with its unit, and the wei to copy."""

from ledger.amounts import ether, ether_and_wei


def test_ether_is_exact_and_never_drops_a_digit():
    # Issue 18, item 6: `chain fund ... 10` printed "sent 1 ETH (10000000000000000000 wei)".
    assert ether(10 * 10**18) == "10 ETH"
    assert ether(100 * 10**18) == "100 ETH"
    assert ether(15 * 10**17) == "1.5 ETH"
    assert ether(4_100_000_000_000) == "0.0000041 ETH"
    assert ether(1) == "0.000000000000000001 ETH"
    assert ether(0) == "0 ETH"
    assert ether(-10**18) == "-1 ETH"
    assert ether_and_wei(12345) == "0.000000000000012345 ETH (12345 wei)"
