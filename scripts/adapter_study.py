"""Does a learned adapter help? `python scripts/adapter_study.py --split dev --train ...`

Trains (or loads) a self-interpretation adapter and scores the default preset with and without it:
- planted words of the split (hit_top3, hit_any, recovered_exact), label length and diversity;
- single-token latents of the default SAE on decoder rows and on typical inputs: recovered token ==
  top token. DEV latents are ids % 4 == 2 (TRAIN latents are % 4 == 0, never scored); TEST latents
  are the real suite's odd ids.
- multi-token latents: label length (words) and diversity (distinct labels / labels), to see
  whether training collapses descriptive labels onto single tokens.
Writes one JSON line per (adapter, suite) to --out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import polars as pl
import torch

from selfexplain.adapter import load_adapter
from selfexplain.adapter_training import (AdapterTrainConfig, latent_split_features,
                                          train_adapter, training_pairs)
from selfexplain.config import ExplainConfig
from selfexplain.evaluation.matching import same_token
from selfexplain.evaluation.planted import run_planted, score_planted
from selfexplain.evaluation.real import feature_stats_for
from selfexplain.evaluation.stats import wilson
from selfexplain.evaluation.wordlists import load_words
from selfexplain.explain import explain_sae_features
from selfexplain.models import load_model
from selfexplain.statstore import load_sae


def label_shape(labels: list[str]) -> dict[str, float]:
    words = [len(label.split()) for label in labels if label]
    return {"label_words": sum(words) / max(len(words), 1),
            "label_single_word": sum(w == 1 for w in words) / max(len(words), 1),
            "label_distinct": len(set(l.lower() for l in labels if l)) / max(len(labels), 1)}


def planted_scores(lm, config, split: str, limit: int) -> dict:
    concepts = load_words(split, limit)
    run = run_planted(lm, config, concepts)
    rows = score_planted(run.results, concepts)
    top = [fe.explanations[0].text if fe.explanations else "" for fe in run.results]
    return {"n": rows.height, **{k: float(rows[k].mean()) for k in
                                  ("hit_top1", "hit_top3", "hit_any", "recovered_exact")},
            **label_shape(top), "seconds": round(run.seconds, 1),
            "examples": [f"{c.name}: {t}" for c, t in zip(concepts[:12], top[:12])]}


def latent_scores(lm, sae, stats, config, features: list[int], single: bool) -> dict:
    results, _ = explain_sae_features(lm, sae, features, config)
    top = dict(zip(stats["feature"].to_list(), stats["top_tokens"].to_list()))
    labels = [fe.explanations[0].text if fe.explanations else "" for fe in results]
    out = {"n": len(results), **label_shape(labels),
           "flagged": sum(fe.failed for fe in results) / max(len(results), 1)}
    if single:
        hits = sum(fe.recovered_token is not None and same_token(fe.recovered_token, top[fe.feature][0])
                   for fe in results)
        low, high = wilson(hits, len(results))
        out.update(recovered=hits / max(len(results), 1), interval=[round(low, 3), round(high, 3)])
    out["examples"] = [f"{fe.feature} [{top[fe.feature][0]!r}]: {labels[i]} | {fe.recovered_token}"
                       for i, fe in enumerate(results[:10])]
    return out


STARTED = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", default="dev", choices=["dev", "test"])
    parser.add_argument("--adapter", default=None, help="an adapter file to evaluate (else train)")
    parser.add_argument("--save", default=None, help="where the trained adapter goes")
    parser.add_argument("--baseline", action="store_true", help="also score without an adapter")
    parser.add_argument("--words", type=int, default=2000, help="TRAIN vocabulary words")
    parser.add_argument("--latents", type=int, default=250, help="TRAIN single-token latents")
    parser.add_argument("--latent-source", default="decoder", choices=["decoder", "input", "both"])
    parser.add_argument("--planted", type=int, default=60)
    parser.add_argument("--real", type=int, default=40)
    parser.add_argument("--suites", default="planted,decoder,input,multi")
    parser.add_argument("--settings", default="{}", help="AdapterTrainConfig fields as JSON")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default="docs/evaluation/adapter/study.jsonl")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model("default", dtype=torch.bfloat16)
    sae, stats = load_sae("default"), feature_stats_for("default")
    layer = 2
    path = args.adapter
    record: dict = {"adapter": path}
    if path is None:
        settings = AdapterTrainConfig(**json.loads(args.settings))
        train_pairs, dev_pairs = training_pairs(
            lm, layer, words=args.words, sae=sae, stats=stats, latents=args.latents,
            latent_source=args.latent_source, seed=settings.seed)
        print(f"{len(train_pairs)} pairs ({time.perf_counter() - STARTED:.0f} s)", flush=True)
        began = time.perf_counter()
        path = args.save or str(Path(tempfile.gettempdir()) / f"adapter-{settings.digest()}.safetensors")
        adapter = train_adapter(lm, settings, path, train_pairs=train_pairs, dev_pairs=dev_pairs,
                                progress=lambda step, loss: print(
            f"step {step}/{settings.steps} loss {loss:.3f} ({time.perf_counter() - began:.0f} s)",
            flush=True) if step % 25 == 0 else None)
        record = {"adapter": path, "settings": json.loads(settings.model_dump_json()),
                  "words": args.words, "latents": args.latents, "latent_source": args.latent_source,
                  "info": json.loads(adapter.info)}
        print(json.dumps(record["info"]))
    adapter = load_adapter(path)
    record["gain"], record["bias_norm"] = adapter.gain, float(adapter.bias.norm())
    specs = (["none"] if args.baseline else []) + [path]
    suites = args.suites.split(",")
    dev_single = latent_split_features(stats, args.split, limit=args.real)
    dev_multi = latent_split_features(stats, args.split, single=False, limit=args.real)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        config = ExplainConfig.from_preset("default", precision="bfloat16", adapter=spec)
        result = {**record, "evaluated": "none" if spec == "none" else "adapter",
                  "split": args.split}
        if "planted" in suites:
            result["planted"] = planted_scores(lm, config, args.split, args.planted)
            print("planted", json.dumps(result["planted"])[:400], flush=True)
        for suite, direction, single, feats in (("decoder", "decoder", True, dev_single),
                                                ("input", "input", True, dev_single),
                                                ("multi", "input", False, dev_multi)):
            if suite in suites:
                cfg = config.model_copy(update={"direction": direction})
                began = time.perf_counter()
                result[suite] = latent_scores(lm, sae, stats, cfg, feats, single)
                result[suite]["seconds"] = round(time.perf_counter() - began, 1)
                print(suite, json.dumps(result[suite])[:400], flush=True)
        print(json.dumps({k: v for k, v in result.items() if k != "info"}, indent=1), flush=True)
        with out.open("a") as handle:
            handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
