"""TOPLOC proofs: per-stage activation proofs and the Gumbel sampling proof."""
