"""stagewise ledger: the journal, Merkle epochs, leaderboard queries and the chain client."""
