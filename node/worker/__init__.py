"""A stage worker: stake checks, its validator client, the receipts it signs, the bundles it sends."""
