"""Round-trip study (issue 9): add round-trip scores to a DEV pool from selection_study.py and
score ranking rules that use them, on the same samples. DEV only: never tune on TEST.

    python scripts/roundtrip_study.py runs/selection_dev.json [--contexts 'It means "' ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from selection_study import GRID, by_composite, consensus, evaluate_rule  # noqa: E402


def add_roundtrip(data: dict, contexts: list[str]) -> None:
    from selfexplain.evaluation.wordlists import concept_directions, load_words
    from selfexplain.explain import NORM_TEXTS
    from selfexplain.models import load_model
    from selfexplain.roundtrip import RoundTrip

    lm = load_model("default")
    by_name = {c.name: c for c in load_words("dev")}
    concepts = [by_name[item["word"]] for item in data["items"]]
    directions = concept_directions(lm, concepts, 2)
    for context in contexts:
        began = time.perf_counter()
        rt = RoundTrip(lm, 2, list(NORM_TEXTS), context)
        texts, dirs, where = [], [], []
        for item, direction in zip(data["items"], directions):
            for c in item["candidates"]:
                texts.append(c["text"])
                dirs.append(direction)
                where.append(c)
        scores = rt.scores(texts, torch.stack(dirs))
        for c, s in zip(where, scores):
            c.setdefault("rt", {})[context] = s
        print(f"context {context!r}: {len(texts)} texts in {time.perf_counter() - began:.1f}s")


def with_rt(context: str, base: Callable | None, weight: float) -> Callable:
    def rank(pool: list[dict], comp: dict[int, float]) -> list[float]:
        first = base(pool, comp) if base else [0.0] * len(pool)
        return [b + weight * c["rt"][context] for b, c in zip(first, pool)]

    return rank


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pool")
    parser.add_argument("--contexts", nargs="*", default=['It means "', "", "Word:"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = Path(args.pool)
    data = json.loads(path.read_text())
    missing = [c for c in args.contexts
               if any(c not in cand.get("rt", {}) for cand in data["items"][0]["candidates"])]
    if missing:
        add_roundtrip(data, missing)
        path.write_text(json.dumps(data))
    full = list(range(len(GRID)))
    half = full[::2]
    samples_max = 1 + max(c["sample"] for item in data["items"] for c in item["candidates"])
    rules = {}
    for grid_name, grid in (("grid17", full), ("grid9", half)):
        for samples in sorted({1, 2, samples_max}):
            base = {"composite": by_composite, "consensus5": consensus(5.0), "none": None}
            rules[f"{grid_name} s{samples} composite"] = evaluate_rule(
                data, grid_idx=grid, top_scales=None, samples=samples, rank=by_composite, max_rel=2.0)
            rules[f"{grid_name} s{samples} consensus5"] = evaluate_rule(
                data, grid_idx=grid, top_scales=None, samples=samples, rank=consensus(5.0), max_rel=2.0)
            for context in args.contexts:
                for base_name, fn in base.items():
                    for weight in ((1.0,) if base_name == "none" else (1, 3, 10, 30)):
                        key = f"{grid_name} s{samples} rt[{context}] x{weight} + {base_name}"
                        rules[key] = evaluate_rule(data, grid_idx=grid, top_scales=None,
                                                   samples=samples, rank=with_rt(context, fn, weight),
                                                   max_rel=2.0)
    for key, value in sorted(rules.items(), key=lambda kv: -kv[1]["top3"])[:60]:
        print(f"{key:60} top3 {value['top3']:.3f}  any {value['any']:.3f}  n {value['n']}")


if __name__ == "__main__":
    main()
