"""Quick self-explanation check of candidate SAEs (part of choosing the default's layer).

`python scripts/check_sae_layers.py runs/layers/L2 runs/layers/L3 --per-kind 6`
For each SAE folder (with feature_stats.parquet): explain `per-kind` single-token features and
`per-kind` other live features with a cheap engine config, then report the failure rate, the mean
max self-similarity, and token recovery on the single-token features (the repeat prompt should
return the feature's top token). Writes OUT (default runs/layers/check.json).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from selfexplain.config import ExplainConfig, linspace
from selfexplain.explain import explain_sae_features
from selfexplain.models import load_model
from selfexplain.saes import load_sae_folder
from selfexplain.feature_stats import load_feature_stats


def pick(stats, per_kind: int, seed: int) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    live = stats.filter(stats["density"] >= 1e-3)
    single = sorted(live.filter(live["single_token"])["feature"].to_list())
    other = sorted(live.filter(~live["single_token"])["feature"].to_list())
    return sorted(rng.sample(single, min(per_kind, len(single)))), sorted(rng.sample(other, per_kind))


def same_token(a: str | None, b: str) -> bool:
    return a is not None and a.strip().lower() == b.strip().lower() and bool(b.strip())


def explain_features(lm, sae, folder: Path, config: ExplainConfig, per_kind: int,
                     seed: int) -> dict[str, object]:
    """Explain single-token and other live features of one SAE; failure and recovery rates."""
    stats = load_feature_stats(folder)
    single, other = pick(stats, per_kind, seed)
    results, _ = explain_sae_features(lm, sae, single + other, config)
    rows = []
    for item in results:
        row = stats.row(item.feature, named=True)
        rows.append({
            "feature": item.feature, "single_token": row["single_token"],
            "top_token": row["top_tokens"][0], "label": item.label,
            "recovered": item.recovered_token, "failed": item.failed,
            "max_selfsim": round(item.max_selfsim, 4),
            "recovered_ok": same_token(item.recovered_token, row["top_tokens"][0]),
            "contexts": [c["text"] for c in row["top_contexts"][:2]],
        })
    singles = [r for r in rows if r["single_token"]]
    summary = {
        "features": len(rows),
        "failed_fraction": sum(r["failed"] for r in rows) / len(rows),
        "mean_max_selfsim": sum(r["max_selfsim"] for r in rows) / len(rows),
        "token_recovery_single": (sum(r["recovered_ok"] for r in singles) / len(singles)
                                  if singles else None),
        "rows": rows,
    }
    return summary


def planted_check(lm, config: ExplainConfig, layer: int, n: int) -> dict[str, object]:
    """Word directions from `layer`'s residual space, injected at the engine's layer."""
    from selfexplain.evaluation.planted import score_planted
    from selfexplain.evaluation.wordlists import concept_directions, load_words
    from selfexplain.explain import explain_directions

    concepts = load_words("dev", limit=n)
    directions = concept_directions(lm, concepts, layer)
    results = explain_directions(lm, directions, config, names=[c.name for c in concepts])
    rows = score_planted(results, concepts)
    return {metric: float(rows[metric].cast(float).mean())
            for metric in ("hit_top3", "hit_any", "recovered_exact", "failed")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--per-kind", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/layers/check.json"))
    parser.add_argument("--planted", type=int, default=0,
                        help="also plant this many dev words' directions taken at each SAE's "
                        "layer (the space its decoder rows live in) and score the labels")
    args = parser.parse_args(argv)
    lm = load_model("default")
    config = ExplainConfig.from_preset(
        "default", metric_scales=linspace(0.0, 2.0, 12), top_scales=2, samples_per_scale=2,
        max_new_tokens=12, seed=args.seed,
    )
    report = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for folder in args.folders:
        sae = load_sae_folder(folder)
        summary = report.get(folder.name, {})
        if args.per_kind > 0:
            summary = explain_features(lm, sae, folder, config, args.per_kind, args.seed)
        if args.planted:
            summary["planted"] = planted_check(lm, config, sae.resid_layer, args.planted)
        report[folder.name] = summary
        print(folder.name, json.dumps({k: v for k, v in summary.items() if k != "rows"}), flush=True)
        for r in summary.get("rows", []):
            print(f"  {r['feature']:5d} {'S' if r['single_token'] else '-'} top={r['top_token']!r} "
                  f"rec={r['recovered']!r} sim={r['max_selfsim']:.3f} label={r['label']!r}",
                  flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
