"""The chain side of the ledger: the contract client, the embedded dev chain, and the sync of its events."""
