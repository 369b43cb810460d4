"""Hand-built engine records and an in-memory warehouse for the SQL tests (no model, no Prefect)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from selfexplain.results import Candidate, FeatureExplanation, SkippedFeature, Sweep
from selfexplain.warehouse import MEMORY, Warehouse

SCALES = [0.0, 10.0, 20.0, 30.0]


def make_feature(feature: int, *, failed: bool = False, label: str = "a word") -> FeatureExplanation:
    """A plausible FeatureExplanation with two meaning and one repeat candidate."""
    meaning = [
        Candidate("meaning", f"{label} {feature}", 20.0, 0, 0.9, 0.95, 0, True,
                  {"agreement": 0.5, "roundtrip": 0.75}, peak_token=" word"),
        Candidate("meaning", f"something else {feature}", 10.0, 0, 0.4, 0.35, 1, False, {}),
    ]
    repeat = [Candidate("repeat", f"tok{feature}", 30.0, 0, 0.7, 0.7, 0, True, {})]
    sweeps = [
        Sweep(prompt, SCALES, [0.0, 0.02, 0.05, 0.03], [0.0, -0.1, -0.3, -0.2],
              [1.0, 0.9, 0.8, 0.85], [0.0, 0.4, 1.0, 0.6])
        for prompt in ("meaning", "repeat")
    ]
    return FeatureExplanation(
        feature=feature, name=f"feature {feature}", explanations=meaning[:1],
        recovered_token=f"tok{feature}", recovered_reliable=not failed, failed=failed,
        failure_reason="max self-similarity 0.004 < 0.01" if failed else None,
        max_selfsim=0.004 if failed else 0.05, max_selfsim_repeat=0.03,
        candidates=meaning + repeat, sweeps=sweeps, seconds=1.5, max_roundtrip=0.75,
    )


def make_results(features=(0, 1, 2), failed=(2,), skipped=(3,)):
    results = [make_feature(f, failed=f in failed) for f in features]
    return results, [SkippedFeature(f, "decoder row is zero") for f in skipped]


@pytest.fixture(name="make_feature")
def make_feature_fixture():
    return make_feature


@pytest.fixture(name="make_results")
def make_results_fixture():
    return make_results


@pytest.fixture
def wh():
    with Warehouse(MEMORY) as warehouse:
        yield warehouse


HOLD_OPEN = textwrap.dedent("""
    import sys
    from selfexplain.warehouse import Warehouse
    wh = Warehouse(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()
""")
"""A second process that opens the warehouse for writing and keeps it until told to stop."""


def with_one_reference_label(path: Path) -> Path:
    """A fresh warehouse at `path` holding one committed row (reference_label 'cats')."""
    with Warehouse(path) as wh:
        wh.execute("INSERT INTO reference_label VALUES ('np', 'r', 's', 0, 'cats', NULL, NULL, "
                   "NULL, NULL, now())")
    return path


@contextmanager
def held_by_another_process(path: Path, script: str = HOLD_OPEN) -> Iterator[subprocess.Popen]:
    """`script` run on `path` in a second Python process, holding it until the block ends."""
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
