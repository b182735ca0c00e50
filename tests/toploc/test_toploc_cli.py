"""`stagewise toploc ...` commands."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from node.cli.main import main

VECTORS = Path(__file__).resolve().parent / "data" / "reference.json.gz"


def test_check_vectors_on_one_case(tmp_path, capsys):
    data = json.loads(gzip.open(VECTORS).read())
    data["cases"] = data["cases"][:1]
    small = tmp_path / "one.json.gz"
    small.write_bytes(gzip.compress(json.dumps(data).encode()))
    assert main(["toploc", "check-vectors", "--vectors", str(small)]) == 0
    out = capsys.readouterr().out
    assert "7/7 byte-identical with the reference tie-break" in out
    assert "negated" in out and out.rstrip().endswith("OK")


def test_check_vectors_reports_a_tampered_proof(tmp_path, capsys):
    data = json.loads(gzip.open(VECTORS).read())
    data["cases"] = data["cases"][:1]
    proof = data["cases"][0]["proofs_skip_prefill_hex"][1]
    data["cases"][0]["proofs_skip_prefill_hex"][1] = proof[:-4] + ("0000" if proof[-4:] != "0000" else "0001")
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(gzip.compress(json.dumps(data).encode()))
    assert main(["toploc", "check-vectors", "--vectors", str(bad)]) == 1
    assert capsys.readouterr().out.rstrip().endswith("MISMATCH")


def test_missing_vectors_file_is_a_clear_error(tmp_path, capsys):
    assert main(["toploc", "check-vectors", "--vectors", str(tmp_path / "nope.json.gz")]) == 1
    assert "no vectors file" in capsys.readouterr().err


def test_thresholds_are_printed(capsys):
    assert main(["toploc", "thresholds"]) == 0
    out = capsys.readouterr().out
    assert "max_mant_err_mean" in out and "logit_margin" in out
