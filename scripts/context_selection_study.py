"""Would choosing among the samples by their fit to the training contexts raise held-out scores?

    python scripts/context_selection_study.py --split dev --limit 100

DEV latents only (even ids). The default preset samples as usual; then each latent's meaning
candidates are ranked three ways: the engine's round trip (shipped), MiniLM similarity of the
candidate to the latent's top contexts from the **training** statistics (no held-out text), and
the two combined (round trip + similarity, each rank-normalised within the latent). Each pick is
scored on the held-out examples (`scoring.EmbeddingScorer`); the oracle picks the candidate with
the best held-out score (an upper bound, not a method).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import polars as pl
import torch

from selfexplain.config import ExplainConfig
from selfexplain.evaluation.real import Embedder, context_texts
from selfexplain.evaluation.stats import mean_interval
from selfexplain.evaluation.suite import sample_features
from selfexplain.explain import explain_sae_features
from selfexplain.models import load_model
from selfexplain.statstore import load_sae
from selfexplain.scoring import scorer_for
from selfexplain.statstore import require_stats_frame


def ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    for r, i in enumerate(order):
        out[i] = r / max(len(values) - 1, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="dev", choices=["dev"])
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    sae = load_sae("default")
    stats = require_stats_frame(sae)
    features = sample_features(stats, args.limit, args.seed, args.split)
    config = ExplainConfig.from_preset("default", precision="bfloat16")
    lm = load_model("default", dtype=config.torch_dtype)
    results, _ = explain_sae_features(lm, sae, features, config)
    embed = Embedder()
    scorer = scorer_for(sae.stats_dir, sae.decoder, embed)
    by_feature = {int(r["feature"]): r for r in stats.iter_rows(named=True)}
    picks: dict[str, list[tuple[int, str | None]]] = {k: [] for k in
                                                      ("roundtrip", "contexts", "combined", "oracle")}
    for fe in results:
        cands = [c for c in fe.candidates if c.prompt == "meaning" and c.text and c.text.strip()]
        texts = list(dict.fromkeys(c.text for c in cands))
        if not texts:
            for k in picks:
                picks[k].append((fe.feature, None))
            continue
        rt: dict[str, float] = {}
        for c in cands:  # a text sampled twice keeps its best round trip
            rt[c.text] = max(rt.get(c.text, -1.0), c.extra.get("roundtrip", -1.0))
        centroid = torch.nn.functional.normalize(
            embed(context_texts(by_feature[fe.feature], 10)).mean(0), dim=-1)
        sim = (embed(texts) @ centroid).tolist()
        rts = [rt[t] for t in texts]
        combined = [a + b for a, b in zip(ranks(rts), ranks(sim))]
        picks["roundtrip"].append((fe.feature, fe.label))
        picks["contexts"].append((fe.feature, texts[max(range(len(texts)), key=sim.__getitem__)]))
        picks["combined"].append((fe.feature, texts[max(range(len(texts)),
                                                        key=combined.__getitem__)]))
        held = scorer.score([fe.feature] * len(texts), texts)["detection_auroc"].to_list()
        best = max(range(len(texts)), key=lambda i: held[i] if held[i] is not None else -1)
        picks["oracle"].append((fe.feature, texts[best]))
    rows = []
    for name, chosen in picks.items():
        scores = scorer.score([f for f, _ in chosen], [t for _, t in chosen])
        for column in ("detection_auroc", "detection_auroc_hard"):
            values = scores[column].drop_nulls().to_list()
            mean, low, high = mean_interval(values)
            rows.append(dict(selection=name, metric=column, mean=round(mean, 3),
                             low=round(low, 3), high=round(high, 3), n=len(values)))
    table = pl.DataFrame(rows)
    with pl.Config(tbl_rows=20):
        print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        table.write_csv(args.out / "summary.csv")
        (args.out / "picks.json").write_text(json.dumps(picks, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
