"""Does a carried label agree with a fresh one? `python scripts/carryover_study.py OLD NEW`.

OLD and NEW are two SAE folders of the same model and hook (e.g. the default SAE and a retrain
with another seed). Every NEW feature's nearest OLD feature by decoder cosine is found
(`selfexplain.carryover`); a seeded sample of NEW features, stratified by that cosine, is labelled
afresh with the default preset, and so are their OLD neighbours. Per cosine bin it reports how
often the OLD label (what carry-over would copy) agrees with the fresh NEW one, beside the ceiling:
how often two fresh labels of the *same* OLD feature agree when only the sampling seed differs.
The agreement rule is `selfexplain.carryover.labels_agree`; its MiniLM threshold is checked
against a null of labels of unrelated features. Writes a JSON and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import polars as pl
import torch

from selfexplain.carryover import label_similarity, labels_agree, match_features
from selfexplain.config import ExplainConfig
from selfexplain.evaluation.real import Embedder, derangement
from selfexplain.explain import SelfExplainer, explain_sae_features
from selfexplain.models import load_model
from selfexplain.statstore import load_sae

BINS = [(0.0, 0.5), (0.5, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 0.95), (0.95, 0.98), (0.98, 1.01)]


def labelled(lm, sae, features, config, explainer=None):
    results, skipped = explain_sae_features(lm, sae, features, config, explainer=explainer)
    by_id = {r.feature: r for r in results}
    return ([by_id[f].label if f in by_id else None for f in features],
            [by_id[f].recovered_token if f in by_id else None for f in features])


def rate(flags):
    flags = [f for f in flags if f is not None]
    return (sum(flags) / len(flags)) if flags else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--per-bin", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/carryover"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    lm = load_model("default")
    old, new = load_sae(str(args.old)), load_sae(str(args.new))
    began = time.perf_counter()
    matches = match_features(new.decoder, old.decoder, threshold=0.9, k=1)
    match_seconds = time.perf_counter() - began
    cosine = matches.cosine[:, 0]
    source = matches.source[:, 0]
    rng = random.Random(args.seed)
    sample: list[tuple[int, int, float, str, bool]] = []
    for low, high in BINS:
        ids = [i for i in torch.nonzero((cosine >= low) & (cosine < high)).squeeze(1).tolist()]
        for f in sorted(rng.sample(ids, min(args.per_bin, len(ids)))):
            sample.append((f, int(source[f]), float(cosine[f]), f"[{low:.2f}, {min(high, 1):.2f})",
                           bool(matches.mutual[f])))
    new_ids = [s[0] for s in sample]
    old_ids = [s[1] for s in sample]
    config = ExplainConfig.from_preset("default")
    other_seed = ExplainConfig.from_preset("default", seed=config.seed + 1)
    began = time.perf_counter()
    new_labels, new_tokens = labelled(lm, new, new_ids, config)
    explainer = SelfExplainer(lm, config)
    old_labels, old_tokens = labelled(lm, old, old_ids, config, explainer)
    again_labels, again_tokens = labelled(lm, old, old_ids, other_seed)
    label_seconds = time.perf_counter() - began
    embed = Embedder()
    carried_sim = label_similarity(new_labels, old_labels, embed)
    ceiling_sim = label_similarity(again_labels, old_labels, embed)
    shuffled = derangement(list(range(len(sample))), seed=1)
    null_sim = label_similarity(new_labels, [old_labels[j] for j in shuffled], embed)
    frame = pl.DataFrame({
        "feature": new_ids, "source_feature": old_ids, "cosine": [s[2] for s in sample],
        "bin": [s[3] for s in sample], "mutual": [s[4] for s in sample],
        "label": new_labels, "source_label": old_labels, "source_label_reseeded": again_labels,
        "token": new_tokens, "source_token": old_tokens, "source_token_reseeded": again_tokens,
        "carried_similarity": carried_sim, "ceiling_similarity": ceiling_sim,
        "null_similarity": null_sim,
        "carried_agree": labels_agree(new_labels, old_labels, new_tokens, old_tokens, carried_sim),
        "ceiling_agree": labels_agree(again_labels, old_labels, again_tokens, old_tokens,
                                      ceiling_sim),
        "null_agree": labels_agree(new_labels, [old_labels[j] for j in shuffled], new_tokens,
                                   [old_tokens[j] for j in shuffled], null_sim),
    })
    null = frame["null_similarity"].drop_nulls()
    table = []
    for low, high in BINS:
        name = f"[{low:.2f}, {min(high, 1):.2f})"
        part = frame.filter(pl.col("bin") == name)
        if part.height:
            table.append({"cosine": name, "n": part.height,
                          "mutual": round(float(part["mutual"].mean()), 2),
                          "carried_agree": round(rate(part["carried_agree"].to_list()), 3),
                          "ceiling_agree": round(rate(part["ceiling_agree"].to_list()), 3),
                          "carried_similarity": round(float(part["carried_similarity"].mean()), 3)})
    summary = {
        "old": f"{old.release}/{old.sae_id}", "new": f"{new.release}/{new.sae_id}",
        "n_new": new.d_sae, "n_old": old.d_sae, "match_seconds": round(match_seconds, 2),
        "label_seconds": round(label_seconds, 1), "n_sampled": len(sample),
        "matched_at_0.9": matches.summary(),
        "cosine_quantiles": {q: round(float(cosine.quantile(q)), 3)
                             for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
        "share_at_or_above": {t: round(float((cosine >= t).float().mean()), 3)
                              for t in (0.7, 0.8, 0.9, 0.95)},
        "null_similarity_p95": round(float(null.quantile(0.95)), 3) if len(null) else None,
        "null_agree": round(rate(frame["null_agree"].to_list()), 3),
        "by_cosine": table,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(args.out / "pairs.parquet")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["| decoder cosine | pairs | mutual | carried label agrees | ceiling (same feature, "
             "other seed) | MiniLM similarity |", "|---|---|---|---|---|---|"]
    for row in table:
        lines.append(f"| {row['cosine']} | {row['n']} | {row['mutual']:.2f} | "
                     f"{row['carried_agree']:.2f} | {row['ceiling_agree']:.2f} | "
                     f"{row['carried_similarity']:.2f} |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(summary, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
