"""How fast a validator checks who signed a bundle.

Rows (one run, side by side):
  recover_signers, 3 stages       target <= 1 ms      (the validator does this for every bundle it receives)
  eth-account path, 3 stages      reference           (encode_typed_data + Account.recover_message)
  speedup over eth-account        target >= 2x
  Bundle.from_json, 3 stages      reference           (40 output tokens, 3 proofs a stage)
  verify_bundle (digests+signers) target <= 2 ms

Usage: .venv/bin/python bench/receipts.py [--quick]; exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eth_account import Account  # noqa: E402
from eth_account.messages import encode_typed_data  # noqa: E402

from node.protocol.bundle import Bundle, SignedStage, expected_proof_count, recover_signers, verify_bundle  # noqa: E402
from node.protocol.job import JobSpec, SamplingParams, StageAssignment  # noqa: E402
from node.protocol.receipts import EIP712_TYPES, ReceiptDomain, expected_receipt, sign_receipt  # noqa: E402
from node.protocol.signing import SigningKey  # noqa: E402


def three_stage_bundle(domain: ReceiptDomain) -> Bundle:
    keys = [SigningKey(hashlib.sha256(f"bench-{i}".encode()).digest()) for i in range(3)]
    spec = JobSpec(
        model_id="0x" + "ab" * 32,
        prompt_token_ids=tuple(range(1, 33)),
        sampling=SamplingParams(temperature=0.7, max_new_tokens=64),
        seed=7,
        group_id="bench-group",
        stages=tuple(StageAssignment(k.address, 10 * i, 10 * (i + 1)) for i, k in enumerate(keys)),
    )
    output = tuple(range(100, 140))
    stages = []
    for index, key in enumerate(keys):
        proofs = tuple(hashlib.sha256(f"{index}/{c}".encode()).digest() * 8 + bytes(2) for c in range(expected_proof_count(len(output))))
        receipt = expected_receipt(spec, index, output, proofs, received_proofs=stages[-1].proofs if stages else ())
        stages.append(SignedStage(receipt, sign_receipt(key, receipt, domain), proofs))
    return Bundle(spec, tuple(stages), output)


def per_call_seconds(fn, repeats: int, rounds: int) -> float:
    """The best over `rounds` of the mean time of `repeats` calls: what the code costs, not what other
    processes on a shared machine happened to take (timeit's advice)."""
    fn()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        samples.append((time.perf_counter() - start) / repeats)
    return min(samples)


def eth_account_signers(bundle: Bundle, domain: ReceiptDomain) -> tuple[str, ...]:
    signers = []
    for stage in bundle.stages:
        message = encode_typed_data(
            full_message={
                "types": EIP712_TYPES,
                "primaryType": "StageReceipt",
                "domain": domain.to_eip712(),
                "message": stage.receipt.to_eip712_message(),
            }
        )
        signers.append(Account.recover_message(message, signature=stage.signature))
    return tuple(signers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (same rows), well under a minute")
    args = parser.parse_args()
    repeats, rounds = (200, 5) if args.quick else (1000, 15)

    domain = ReceiptDomain(chain_id=31337, verifying_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3")
    bundle = three_stage_bundle(domain)
    text = bundle.to_json()
    assert recover_signers(bundle, domain) == eth_account_signers(bundle, domain) == tuple(s.worker for s in bundle.spec.stages)

    ours = per_call_seconds(lambda: recover_signers(bundle, domain), repeats, rounds)
    theirs = per_call_seconds(lambda: eth_account_signers(bundle, domain), max(repeats // 20, 5), rounds)
    parse = per_call_seconds(lambda: Bundle.from_json(text), repeats // 4, rounds)
    verify = per_call_seconds(lambda: verify_bundle(bundle, domain), repeats // 2, rounds)

    rows = [
        ("recover_signers, 3 stages", f"{ours * 1e3:.3f} ms", "<= 1 ms", ours <= 1e-3),
        ("eth-account path, 3 stages", f"{theirs * 1e3:.3f} ms", "reference", True),
        ("speedup over eth-account", f"{theirs / ours:.1f}x", ">= 2x", theirs / ours >= 2),
        ("Bundle.from_json, 3 stages", f"{parse * 1e3:.3f} ms", "reference", True),
        ("verify_bundle (digests+signers)", f"{verify * 1e3:.3f} ms", "<= 2 ms", verify <= 2e-3),
    ]
    width = max(len(r[0]) for r in rows)
    for name, figure, target, ok in rows:
        print(f"{name:<{width}}  {figure:>10}  target {target:<10} {'ok' if ok else 'MISS'}")
    missed = [r[0] for r in rows if not r[3]]
    if missed:
        print(f"missed: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
