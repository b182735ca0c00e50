"""The signed and sent values of the protocol: jobs, receipts, bundles, worker messages, signatures.

Nothing here imports the rest of `node`; every other package builds on these types."""
