"""Selection study (issue 9): sample a generous pool once on DEV planted words, then score many
selection rules on the SAME samples (re-ranking is pure), to choose the default's grid, plan and
ranking. Never run on the TEST split for tuning.

    python scripts/selection_study.py --limit 40 --out runs/selection_dev.json
    python scripts/selection_study.py --load runs/selection_dev.json   # re-score only
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from selfexplain.config import ExplainConfig, linspace
from selfexplain.evaluation.matching import names_any
from selfexplain.selection import content_words

GRID = linspace(0.0, 2.0, 17)  # relative to the residual norm; step 0.125


def sample_pool(limit: int, split: str, samples: int, threads: int) -> dict:
    from selfexplain.evaluation.wordlists import concept_directions, load_words
    from selfexplain.explain import SelfExplainer
    from selfexplain.models import load_model

    torch.set_num_threads(threads)
    lm = load_model("default")
    concepts = load_words(split, limit)
    config = ExplainConfig.from_preset(
        "default", metric_scales=GRID, generation_scales=GRID[1:], samples_per_scale=samples,
        recover_token=False, selection="composite", min_scale=0.125,
    )
    explainer = SelfExplainer(lm, config)
    directions = concept_directions(lm, concepts, config.injection_layer)
    began = time.perf_counter()
    results = explainer.explain(directions, list(range(len(concepts))), [c.name for c in concepts])
    return {
        "seconds": time.perf_counter() - began,
        "unit": explainer.unit,
        "items": [
            {
                "word": concept.name, "answers": list(concept.answers), "pos": concept.pos,
                "sweep": {k: r.sweeps[0].__dict__[k] for k in ("scales", "selfsim", "entropy", "crossent")},
                "candidates": [{"text": c.text, "scale": c.scale, "sample": c.sample}
                               for c in r.candidates if c.prompt == "meaning"],
            }
            for concept, r in zip(concepts, results)
        ],
    }


def minmax(values: list[float]) -> list[float]:
    low, high = min(values), max(values)
    return [(v - low) / max(high - low, 1e-12) for v in values]


def composite(item: dict, grid_idx: list[int], alpha: float, min_rel: float, unit: float,
              metric: str = "entropy") -> dict[int, float]:
    """Composite over a sub-grid (indices into the stored grid); scales under min get the min."""
    sweep = item["sweep"]
    selfsim = minmax([sweep["selfsim"][i] for i in grid_idx])
    ent = minmax([sweep[metric][i] for i in grid_idx])
    score = [alpha * s - (1 - alpha) * e for s, e in zip(selfsim, ent)]
    eligible = [j for j, i in enumerate(grid_idx) if sweep["scales"][i] >= min_rel * unit - 1e-6]
    floor = min(score[j] for j in eligible)
    return {i: (score[j] if j in eligible else floor) for j, i in enumerate(grid_idx)}


def nearest(scales: list[float], scale: float, grid_idx: list[int]) -> int:
    return min(grid_idx, key=lambda i: abs(scales[i] - scale))


def evaluate_rule(data: dict, *, grid_idx: list[int], top_scales: int | None, samples: int,
                  rank: Callable[[list[dict], dict[int, float]], list[float]], alpha: float = 0.4,
                  min_rel: float = 0.125, max_rel: float = 9.0) -> dict[str, float]:
    unit, hits, ceiling, n = data["unit"], 0, 0, 0
    for item in data["items"]:
        scales = item["sweep"]["scales"]
        grid = [i for i in grid_idx if scales[i] <= max_rel * unit + 1e-6]
        comp = composite(item, grid, alpha, min_rel, unit)
        eligible = [i for i in grid if scales[i] >= min_rel * unit - 1e-6]
        chosen = set(sorted(eligible, key=lambda i: -comp[i])[:top_scales] if top_scales else eligible)
        pool = [c for c in item["candidates"] if c["sample"] < samples
                and nearest(scales, c["scale"], grid_idx) in chosen]
        for c in pool:
            c["_grid"] = nearest(scales, c["scale"], grid)
        scores = rank(pool, comp)
        ordered = [c for _, c in sorted(zip(scores, range(len(pool))), key=lambda t: -t[0])]
        top = [pool[i]["text"] for i in ordered if pool[i]["text"]][:3]
        hit = any(names_any(t, item["answers"], item["pos"]) for t in top)
        anyhit = any(names_any(c["text"], item["answers"], item["pos"]) for c in pool)
        hits += hit
        ceiling += anyhit
        n += 1
    return {"top3": hits / n, "any": ceiling / n, "n": n}


def by_composite(pool: list[dict], comp: dict[int, float]) -> list[float]:
    return [comp[c["_grid"]] for c in pool]


def consensus(weight: float) -> Callable:
    def rank(pool: list[dict], comp: dict[int, float]) -> list[float]:
        words = [content_words(c["text"]) for c in pool]
        counts: dict[str, int] = {}
        for ws in words:
            for w in ws:
                counts[w] = counts.get(w, 0) + 1
        others = max(len(pool) - 1, 1)
        return [comp[c["_grid"]] + weight * max((counts[w] - 1 for w in ws), default=0) / others
                for c, ws in zip(pool, words)]

    return rank


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--split", default="dev", choices=["dev"])
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/selection_dev.json")
    parser.add_argument("--load")
    args = parser.parse_args()
    if args.load:
        data = json.loads(Path(args.load).read_text())
    else:
        data = sample_pool(args.limit, args.split, args.samples, args.threads)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(data))
        print(f"sampled {len(data['items'])} words in {data['seconds']:.0f}s -> {args.out}")
    full = list(range(len(GRID)))
    half = full[::2]
    rules = {}
    for grid_name, grid in (("grid17", full), ("grid9", half)):
        for max_rel in (2.0, 1.5, 1.25, 1.0):
            for top in (None, 2, 4, 6):
                for samples in (1, 2):
                    for rank_name, rank in (("composite", by_composite), ("consensus0.5", consensus(0.5)),
                                            ("consensus1", consensus(1.0)), ("consensus2", consensus(2.0))):
                        key = f"{grid_name} max{max_rel} top{top or 'all'} s{samples} {rank_name}"
                        rules[key] = evaluate_rule(data, grid_idx=grid, top_scales=top, samples=samples,
                                                   rank=rank, max_rel=max_rel)
    for key, value in sorted(rules.items(), key=lambda kv: -kv[1]["top3"]):
        print(f"{key:48} top3 {value['top3']:.3f}  any {value['any']:.3f}  n {value['n']}")


if __name__ == "__main__":
    main()
