"""`make bench-browse`: does the feature table stay fast at 100k features?

Builds a warehouse with one SAE of N labelled features (synthetic labels, statistics and a run,
written through the same upserts as a relabel run), then times the feature-table page as a
browser asks for it (HTTP through FastAPI's test client: warehouse open, query, template) for the
first page, a label search, a flag + round-trip filter, a sort by density, and a deep page.
Writes bench/browse.json. A benchmark, never a unit test.

    python -m bench.browse [--features 100000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

HERE = Path(__file__).parent
RELEASE, SAE_ID = "bench", "sae_100k"
WORDS = ("cat dog river mountain happy anger music number code python function king queen "
         "water fire blue green time money love war city house tree book light night").split()


def build(path: Path, n: int, seed: int = 0) -> None:
    from selfexplain.warehouse import Warehouse
    from selfexplain.warehouse_rows import frame

    rng = random.Random(seed)
    now = dt.datetime.now(dt.timezone.utc)
    labels = [" ".join(rng.sample(WORDS, 3)) for _ in range(n)]
    roundtrip = [rng.random() for _ in range(n)]
    label = pl.DataFrame({
        "release": [RELEASE] * n, "sae_id": [SAE_ID] * n, "feature": list(range(n)),
        "run_id": ["run-1"] * n, "label": labels, "top_labels": [[t] for t in labels],
        "recovered_token": [t.split()[0] for t in labels], "recovered_reliable": [True] * n,
        "scale": [75.0] * n, "composite": [0.1] * n, "score": [1.0] * n,
        "max_selfsim": [0.1] * n, "max_selfsim_repeat": [0.1] * n, "max_roundtrip": roundtrip,
        "failed": [r < 0.3 for r in roundtrip], "failure_reason": [None] * n,
        "skipped": [False] * n, "seconds": [1.0] * n, "model_id": ["m"] * n,
        "model_revision": ["r"] * n, "preset": ["default"] * n, "settings_hash": ["h"] * n,
        "labelled_at": [now] * n,
    })
    with Warehouse(path) as wh:
        wh.upsert("sae", frame("sae", [dict(release=RELEASE, sae_id=SAE_ID, source="local",
                                            d_sae=n, first_seen=now, last_seen=now)]))
        wh.upsert("label", label.cast(frame("label", []).schema, strict=False)
                  .select(frame("label", []).columns))
        wh.upsert("label_current", pl.DataFrame({
            "release": [RELEASE] * n, "sae_id": [SAE_ID] * n, "feature": list(range(n)),
            "run_id": ["run-1"] * n, "labelled_at": [now] * n,
        }).cast(frame("label_current", []).schema, strict=False))
        wh.upsert("feature_stats", pl.DataFrame({
            "release": [RELEASE] * n, "sae_id": [SAE_ID] * n, "feature": list(range(n)),
            "density": [rng.random() * 0.01 for _ in range(n)], "mean_activation": [2.0] * n,
            "max_activation": [5.0] * n, "top_tokens": [[" a", " b"]] * n,
            "top_token_share": [0.5] * n, "single_token": [False] * n,
            "vocabproj_tokens": [[" c"]] * n,
            "top_contexts": [[{"text": "x «y» z", "activation": 1.0}]] * n,
            "token_alignment": [None] * n, "computed_at": [now] * n,
        }, schema_overrides={"token_alignment": pl.Float64}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--limit-ms", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=HERE / "browse.json")
    args = parser.parse_args(argv)
    from fastapi.testclient import TestClient

    from selfexplain.browse.app import create_app

    base = {"release": RELEASE, "sae_id": SAE_ID}
    cases = {
        "first page": {},
        "search 'river'": {"q": "river"},
        "flagged, round trip 0.1-0.2": {"flagged": "yes", "rt_min": 0.1, "rt_max": 0.2},
        "sorted by density, descending": {"sort": "density", "desc": "true"},
        "page 1000": {"page": 1000},
        "search + sort by round trip": {"q": "king", "sort": "roundtrip", "desc": "true"},
    }
    results = {}
    with tempfile.TemporaryDirectory(prefix="selfexplain-bench-browse-") as tmp:
        path = Path(tmp) / "w.duckdb"
        began = time.perf_counter()
        build(path, args.features)
        print(f"built a warehouse of {args.features:,} labelled features in "
              f"{time.perf_counter() - began:.1f} s", flush=True)
        client = TestClient(create_app(path))
        client.get("/features", params=base)  # warm-up: imports, first template compile
        for name, params in cases.items():
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                response = client.get("/features", params={**base, **params})
                times.append((time.perf_counter() - t0) * 1000)
                assert response.status_code == 200, response.text[:200]
            results[name] = {"median_ms": round(statistics.median(times), 1),
                             "max_ms": round(max(times), 1)}
            print(f"{name:34s} median {results[name]['median_ms']:7.1f} ms   "
                  f"max {results[name]['max_ms']:7.1f} ms", flush=True)
    worst = max(r["max_ms"] for r in results.values())
    summary = {"features": args.features, "repeats": args.repeats, "worst_ms": worst,
               "limit_ms": args.limit_ms, "within_limit": worst < args.limit_ms}
    args.out.write_text(json.dumps({"summary": summary, "cases": results}, indent=2) + "\n")
    print(json.dumps(summary))
    return 0 if summary["within_limit"] else 1


if __name__ == "__main__":
    sys.exit(main())
