"""The official variable lists of ../shared/spec (TSV: name, shape), for the model and export tests.

Importable from any test module (tests/ is on sys.path through its rootdir conftest)."""

import os

import pytest

SPEC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "spec")


def official_vars(filename):
    """[(name, shape tuple)] in file (creation) order; skips the test when the clone has no
    ../shared/spec beside it."""
    if not os.path.isdir(SPEC_DIR):
        pytest.skip(f"official variable lists not available: {os.path.abspath(SPEC_DIR)} is absent")
    rows = []
    with open(os.path.join(SPEC_DIR, filename), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                name, shape = line.rstrip("\n").split("\t")
                rows.append((name, tuple(int(d) for d in shape.strip("[]").split(",") if d.strip())))
    return rows
