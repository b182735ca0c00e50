"""stagewise node: stage servers, TOPLOC proofs, receipts, wallets, the worker and the validator."""
