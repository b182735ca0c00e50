"""Prometheus metrics of one validator node, in a registry of its own.

Each app owns a `CollectorRegistry`, so two validators in one process (tests, the devnet) never collide
over metric names and `/metrics` shows exactly this node's figures.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ValidatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.bundles_received = Counter(
            "stagewise_bundles_received", "Bundles submitted to this validator (any outcome)", registry=r
        )
        self.bundles_refused = Counter(
            "stagewise_bundles_refused", "Bundles refused at intake, by reason (nothing written)", ["reason"], registry=r
        )
        self.bundles_queued = Counter("stagewise_bundles_queued", "Bundles written to the ledger queue", registry=r)
        self.verdicts = Counter(
            "stagewise_verdicts", "Verdicts written, by outcome and reason", ["outcome", "reason"], registry=r
        )
        self.verdict_latency = Histogram(
            "stagewise_verdict_latency_seconds",
            "From a bundle's intake to its verdict",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
            registry=r,
        )
        self.replay_seconds = Histogram(
            "stagewise_replay_seconds",
            "Time of one replay (prefill + proof and sampling checks)",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.queue_depth = Gauge("stagewise_queue_depth", "Jobs waiting for validation", registry=r)
        self.slashes = Counter("stagewise_slashes", "Slashes journaled by this validator", registry=r)
        self.chain_transactions = Counter(
            "stagewise_chain_transactions", "Outbox transactions confirmed on chain, by kind", ["kind"], registry=r
        )
        self.anchors = Counter("stagewise_anchors", "Epochs anchored on chain", registry=r)
        self.epochs_followed = Counter(
            "stagewise_epochs_followed", "Chain epochs other validators anchored, followed into this ledger", registry=r
        )
        self.epochs_unfollowed = Counter(
            "stagewise_epochs_unfollowed",
            "Attempts to follow a chain epoch that no peer served with entries matching its anchor", registry=r,
        )
        self.chain_errors = Counter(
            "stagewise_chain_errors", "Failed attempts to reach or write the chain, by kind", ["kind"], registry=r
        )
        self.orders_waiting = Counter(
            "stagewise_orders_waiting",
            "Outbox passes that left a slash or anchor order waiting for validator signatures, by kind", ["kind"],
            registry=r,
        )
        self.peer_refusals = Counter(
            "stagewise_peer_refusals", "Refusals this node's peers gave its orders, by kind", ["kind"], registry=r
        )
        self.cosign_refusals = Counter(
            "stagewise_cosign_refusals", "Peers' orders this node refused to co-sign, by kind and reason",
            ["kind", "reason"], registry=r,
        )
        self.cosign_signed = Counter(
            "stagewise_cosign_signed", "Peers' orders this node judged and co-signed, by kind", ["kind"], registry=r
        )
        self.cosign_audited = Counter(
            "stagewise_cosign_audited_jobs", "Rewarded jobs replayed while judging a peer's anchor (--audit-rate)",
            registry=r,
        )
        self.sampled_out = Counter(
            "stagewise_jobs_not_replayed", "Jobs accepted without replay because of --sample-rate", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
