"""What stagewise costs on chain, in gas, measured on a real EVM.

Rows (one run, side by side, gas from transaction receipts):
  anchor, epoch of 10 entries            reference
  anchor, epoch of 10,000 entries        target: within 1% of the 10-entry anchor (anchor gas must not grow
                                         with the epoch; the roots come from ledger.merkle over real trees)
  stake / slash / claim                  budgets (claim: a proof from a rewards tree of 1,000 workers)
  slash / anchor at threshold t = 1, 3, 5
                                         what t validators' signatures cost (PROTOCOL I7); target: at t = 3,
                                         at most 30,000 gas above the single-key slash and anchor of the
                                         contract before I7 (70,883 and 64,603 gas, measured by this bench
                                         at commit 1451a3c; gas is deterministic)
  per 1,000 stage receipts, stagewise    one anchor for an epoch that covers them
  per 1,000 stage receipts, on-chain     one submission per receipt (contracts/bench/ReceiptRegistry.sol,
                                         what a protocol that records every work key on chain pays)
  stagewise / on-chain                   target <= 1/100

Claims are not a per-receipt cost: a rewards leaf is cumulative, so a worker claims when it chooses and one
claim pays any number of epochs (the per-receipt protocol would need payouts on top of its submissions too).

Usage: .venv/bin/python bench/chain.py [--quick] [--backend embedded|anvil]; exits 1 if a target is missed.
--quick submits 100 receipts to the registry instead of 1,000 (every submission costs the same gas: a fresh
storage slot) and scales the sum; the rows are the same.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from ledger import merkle  # noqa: E402
from ledger.chain.abi import BUILD_DIR, Artifact  # noqa: E402
from ledger.chain.client import ChainClient  # noqa: E402
from ledger.chain.embedded import AnvilNode  # noqa: E402
from ledger.chain.keys import tester_keys  # noqa: E402
from node.protocol.signing import SigningKey  # noqa: E402

RECEIPTS = 1_000
BUDGETS = {"stake": 75_000, "slash": 100_000, "claim": 120_000}
BEFORE_I7 = {"slash": 70_883, "anchor": 64_603}  # one validator's transaction, no signatures checked
THRESHOLD_OVERHEAD = 30_000  # gas t = 3 signatures may add
THRESHOLDS = (1, 3, 5)


def entry_hashes(count: int, tag: str) -> list[bytes]:
    return [merkle.keccak(f"{tag}/{i}".encode()) for i in range(count)]


def rewards_tree(workers: list[str]) -> tuple[bytes, list[bytes], list[int]]:
    amounts = [10**15 * (i + 1) for i in range(len(workers))]
    leaves = [merkle.reward_leaf(w, a) for w, a in zip(workers, amounts)]
    return merkle.root(leaves), leaves, amounts


def open_chain(stack: ExitStack, backend: str) -> ChainClient:
    if backend == "embedded":
        return ChainClient.embedded(unbonding_delay=60)
    node = stack.enter_context(AnvilNode(accounts=4))
    client = ChainClient.connect(node.url, dev_keys=node.keys)
    client.deploy(node.keys[0], treasury=node.keys[1].address, unbonding_delay=60, validators=[node.keys[0].address])
    return client


def measure(chain: ChainClient, submissions: int) -> dict[str, int]:
    validator, worker = chain.dev_keys[0], chain.dev_keys[2]
    gas: dict[str, int] = {}

    # Anchors: a first anchor writes fresh slots (counter, epoch), so compare two later ones like for like.
    chain.signed_anchor(validator, [validator], 1, merkle.root(entry_hashes(3, "warm-up")), merkle.keccak(b"r1"), 3)
    small = entry_hashes(10, "epoch-2")
    gas["anchor_10"] = chain.signed_anchor(validator, [validator], 2, merkle.root(small), merkle.keccak(b"r2"), len(small)).gas_used
    large = entry_hashes(10_000, "epoch-3")
    gas["anchor_10000"] = chain.signed_anchor(validator, [validator], 3, merkle.root(large), merkle.keccak(b"r3"), len(large)).gas_used

    gas["stake"] = chain.stake(worker, 10**18).gas_used
    gas["slash"] = chain.signed_slash(validator, [validator], worker.address, 10**17, merkle.keccak(b"evidence")).gas_used

    # Claim against a rewards root over 1,000 workers, the claimant among them.
    workers = [worker.address] + [SigningKey(merkle.keccak(b"w%d" % i)).address for i in range(999)]
    root, leaves, amounts = rewards_tree(workers)
    chain.signed_anchor(validator, [validator], 4, merkle.keccak(b"entries-4"), root, len(workers))
    chain.fund_rewards(validator, sum(amounts))
    gas["claim"] = chain.claim(worker, amounts[0], merkle.proof(leaves, 0)).gas_used

    registry = Artifact.load("bench/ReceiptRegistry")
    address = chain.deploy_artifact(validator, registry).contract_address
    contract = chain.contract_at(registry, address)
    total = 0
    for i in tqdm(range(submissions), desc="per-receipt submissions", leave=False, disable=None):
        total += chain.transact(worker, contract.functions.submit(merkle.keccak(b"receipt %d" % i))).gas_used
    gas["per_receipt_1000"] = total * RECEIPTS // submissions
    gas["stagewise_1000"] = gas["anchor_10"]  # one anchor covers an epoch of any size

    # Threshold orders: four more validators (signing keys only), then t of the five sign each order.
    signers = [validator] + tester_keys(9)[5:9]
    for key in signers[1:]:
        chain.add_validator(validator, key.address)
    epoch = 5
    for t in THRESHOLDS:
        chain.set_threshold(validator, t)
        gas[f"slash_t{t}"] = chain.signed_slash(
            validator, signers[:t], worker.address, 10**15, merkle.keccak(b"evidence t%d" % t)
        ).gas_used
        gas[f"anchor_t{t}"] = chain.signed_anchor(
            validator, signers[:t], epoch, merkle.keccak(b"entries %d" % epoch), merkle.keccak(b"r"), 10
        ).gas_used
        epoch += 1
    return gas


def report(gas: dict[str, int], backend: str, submissions: int) -> bool:
    compiler = json.loads((BUILD_DIR / "StagewiseStaking.json").read_text())["compiler"]
    print(f"chain bench: backend {backend}, solc {compiler['solc'].split('+')[0]}, evm {compiler['evmVersion']}")
    rows: list[tuple[str, str, str, bool | None]] = []
    rows.append(("anchor gas, epoch of 10 entries", f"{gas['anchor_10']:,}", "reference", None))
    drift = abs(gas["anchor_10000"] - gas["anchor_10"]) / gas["anchor_10"]
    rows.append(
        (
            "anchor gas, epoch of 10,000 entries",
            f"{gas['anchor_10000']:,} ({drift:.3%} off)",
            "within 1% of 10",
            drift <= 0.01,
        )
    )
    for name in ("stake", "slash", "claim"):
        label = f"{name} gas" + (" (1,000-worker rewards tree)" if name == "claim" else "")
        rows.append((label, f"{gas[name]:,}", f"<= {BUDGETS[name]:,}", gas[name] <= BUDGETS[name]))
    rows.append(("gas / 1,000 receipts, stagewise (1 anchor)", f"{gas['stagewise_1000']:,}", "reference", None))
    measured = f"{submissions:,} measured" if submissions != RECEIPTS else "all measured"
    rows.append(
        (f"gas / 1,000 receipts, 1 tx per receipt ({measured})", f"{gas['per_receipt_1000']:,}", "reference", None)
    )
    ratio = gas["stagewise_1000"] / gas["per_receipt_1000"]
    rows.append(("stagewise / per-receipt", f"1/{1 / ratio:,.0f}", "<= 1/100", ratio <= 0.01))
    for name in ("slash", "anchor"):
        for t in THRESHOLDS:
            value = gas[f"{name}_t{t}"]
            extra = value - BEFORE_I7[name]
            target, passed = (f"<= +{THRESHOLD_OVERHEAD:,}", extra <= THRESHOLD_OVERHEAD) if t == 3 else ("—", None)
            rows.append((f"{name} gas, threshold t = {t} (vs one key before I7)", f"{value:,} ({extra:+,})", target, passed))
    ok = True
    for label, value, target, passed in rows:
        verdict = "" if passed is None else ("ok" if passed else "MISS")
        print(f"  {label:<52} {value:>24}   target {target:<16} {verdict}")
        ok = ok and passed is not False
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 per-receipt submissions instead of 1,000")
    parser.add_argument(
        "--backend",
        choices=("embedded", "anvil"),
        default=os.environ.get("STAGEWISE_BENCH_CHAIN", "embedded"),
        help="in-process py-evm (default) or an anvil node; gas is the same on both",
    )
    args = parser.parse_args(argv)
    submissions = 100 if args.quick else RECEIPTS
    with ExitStack() as stack:
        gas = measure(open_chain(stack, args.backend), submissions)
    return 0 if report(gas, args.backend, submissions) else 1


if __name__ == "__main__":
    sys.exit(main())
