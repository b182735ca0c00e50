"""Processes assembled from their parts, after the command line has parsed their flags: a validator (with
orchestration when it is on), a stage worker, and the local devnet of `make demo`. The one layer that may
import every other package of the node; only node.cli imports it."""
