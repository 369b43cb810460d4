"""Calibrate the failure flag on real latents against their held-out detection scores (issue 26).

    python scripts/calibrate_flag.py --dev DEV --test TEST --out docs/evaluation/flag_calibration

DEV_ITEMS / TEST_ITEMS are `items_real.parquet` of `selfexplain evaluate --suite real --split dev|test
--out ...` (each runs the default method and the control). Without them the script runs both
evaluations itself (`--limit` latents each).

A label is **bad** when its held-out detection AUROC (random negatives) is no higher than the 90th
percentile of the control on DEV (each latent scored with another latent's label): a label that
does not tell where its latent fires better than 9 in 10 wrong labels. The flag fires when the
best round trip of a meaning candidate is under a threshold t. t is chosen on DEV: the highest
recall with precision >= 0.8 when one exists, else the best F1. Precision and recall are then
reported on TEST with 95% Wilson intervals, beside the shipped threshold.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import polars as pl

from selfexplain.evaluation.stats import wilson

METHOD, CONTROL = "default", "control:other-label"
SCORE = "max_roundtrip"
TARGET_PRECISION = 0.8


def items_for(split: str, path: Path | None, limit: int, out: Path) -> pl.DataFrame:
    if path is None:
        path = out / f"real_{split}" / "items_real.parquet"
        if not path.is_file():
            subprocess.run([sys.executable, "-m", "cli", "evaluate", "--suite", "real",
                            "--split", split, "--limit", str(limit), "--methods", METHOD,
                            "--rerank", "none", "--out", str(path.parent)], check=True)
    items = pl.read_parquet(path)
    return items.filter(pl.col("suite") == "real") if "suite" in items.columns else items


def rates(flagged: list[bool], bad: list[bool]) -> dict[str, object]:
    tp = sum(f and b for f, b in zip(flagged, bad))
    n_flag, n_bad = sum(flagged), sum(bad)
    precision = tp / n_flag if n_flag else None
    recall = tp / n_bad if n_bad else None
    return {"flagged": n_flag, "bad": n_bad, "true_positives": tp, "n": len(bad),
            "precision": precision, "precision_ci": list(wilson(tp, n_flag)) if n_flag else None,
            "recall": recall, "recall_ci": list(wilson(tp, n_bad)) if n_bad else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", type=Path)
    parser.add_argument("--test", type=Path)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--shipped", type=float, default=0.3, help="the threshold in force")
    parser.add_argument("--out", type=Path, default=Path("docs/evaluation/flag_calibration"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    dev = items_for("dev", args.dev, args.limit, args.out)
    test = items_for("test", args.test, args.limit, args.out)
    control = dev.filter(pl.col("method") == CONTROL)["detection_auroc"].drop_nulls()
    bad_below = float(control.quantile(0.9))

    def labelled(items: pl.DataFrame) -> pl.DataFrame:
        return items.filter((pl.col("method") == METHOD) & pl.col("detection_auroc").is_not_null()
                            & pl.col(SCORE).is_not_null()).with_columns(
            (pl.col("detection_auroc") <= bad_below).alias("bad"))

    dev_rows, test_rows = labelled(dev), labelled(test)
    candidates = sorted(set(round(v, 3) for v in dev_rows[SCORE].to_list()))
    sweep = []
    for t in candidates + [max(candidates) + 1e-3]:
        r = rates([s < t for s in dev_rows[SCORE].to_list()], dev_rows["bad"].to_list())
        p, rc = r["precision"] or 0.0, r["recall"] or 0.0
        sweep.append({"threshold": t, **r, "f1": 2 * p * rc / (p + rc) if p + rc else 0.0})
    meeting = [s for s in sweep if s["precision"] is not None and s["precision"] >= TARGET_PRECISION
               and s["flagged"] >= 5]
    chosen = (max(meeting, key=lambda s: (s["recall"], -s["threshold"])) if meeting
              else max(sweep, key=lambda s: s["f1"]))
    rule = "highest DEV recall at precision >= 0.8" if meeting else "best DEV F1 (no threshold " \
        "reached precision 0.8 with 5 or more flags)"
    result = {
        "bad_label": f"held-out detection AUROC <= {bad_below:.3f} (90th percentile of the DEV "
                     "control: another latent's label)",
        "score": SCORE, "rule": rule, "threshold": chosen["threshold"],
        "dev": {k: v for k, v in chosen.items() if k != "threshold"},
        "test": rates([s < chosen["threshold"] for s in test_rows[SCORE].to_list()],
                      test_rows["bad"].to_list()),
        "test_at_shipped": {"threshold": args.shipped, **rates(
            [s < args.shipped for s in test_rows[SCORE].to_list()], test_rows["bad"].to_list())},
        "bad_rate": {"dev": float(dev_rows["bad"].mean()), "test": float(test_rows["bad"].mean())},
        "auroc_of_score_for_bad": auroc_bad(test_rows),
    }
    (args.out / "calibration.json").write_text(json.dumps(result, indent=2) + "\n")
    pl.DataFrame(sweep).drop("precision_ci", "recall_ci").write_csv(args.out / "dev_sweep.csv")
    print(json.dumps(result, indent=2))
    return 0


def auroc_bad(rows: pl.DataFrame) -> float | None:
    """How well the round trip alone ranks bad labels below good ones on TEST (0.5: not at all)."""
    from selfexplain.scoring import auroc

    good = rows.filter(~pl.col("bad"))[SCORE].to_list()
    bad = rows.filter(pl.col("bad"))[SCORE].to_list()
    return auroc(good, bad)


if __name__ == "__main__":
    raise SystemExit(main())
