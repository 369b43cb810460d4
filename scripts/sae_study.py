"""Choose the default SAE's width, k and batch by measurement: `python scripts/sae_study.py`.

Collects one set of training activations (entering --layer) and held-out activations, trains each
candidate on the same tokens, and prints per candidate: held-out variance explained, L0, dead
fraction, single-token features and their decoder/token alignment (median and quartiles of the
cosine between the decoder row and the top token's planted direction), and training tokens/s.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import polars as pl
import torch

from selfexplain.corpus import token_chunks
from selfexplain.models import load_model
from selfexplain.sae_trainer import TrainSaeConfig, encode, evaluate, train_in_memory
from selfexplain.train_sae import collect_activations
from selfexplain.feature_stats import SINGLE_TOKEN_MIN_FIRINGS, SINGLE_TOKEN_SHARE, token_alignment


def single_token_alignment(lm, sae, heldout, windows, layer):
    """(n single-token features, median, q1, q3 of their decoder/token cosine), with the rule and
    the cosine of `selfexplain.feature_stats` (computed here without the contexts, which are slow)."""
    token_ids = windows[:, 1:].reshape(-1)
    values, indices = encode(sae, heldout.float())
    keep = values > 0
    feats = indices[keep]
    toks = token_ids[:, None].expand_as(indices)[keep]
    vals = values[keep].double()
    width = sae.W_dec.shape[0]
    vocab = int(token_ids.max()) + 1
    keys, inv = torch.unique(feats * vocab + toks, return_inverse=True)
    mass = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, inv, vals)
    total = torch.zeros(width, dtype=torch.float64).index_add_(0, feats, vals)
    count = torch.bincount(feats, minlength=width)
    order = torch.argsort(mass, descending=True, stable=True)
    top: dict[int, int] = {}
    for key in keys[order].tolist():  # the first key seen per feature is its heaviest token
        top.setdefault(key // vocab, key % vocab)
    share = torch.zeros(width, dtype=torch.float64).scatter_reduce_(
        0, keys // vocab, mass, "amax") / total.clamp_min(1e-12)
    single = (share >= SINGLE_TOKEN_SHARE) & (count >= SINGLE_TOKEN_MIN_FIRINGS)
    frame = pl.DataFrame({
        "feature": list(range(width)), "single_token": single.tolist(),
        "top_tokens": [[lm.tokenizer.decode([top[f]])] if f in top else [] for f in range(width)],
    })
    aligned = token_alignment(lm, sae.W_dec, frame, layer)["token_alignment"].drop_nulls()
    q = torch.quantile(torch.tensor(aligned.to_list()), torch.tensor([0.25, 0.5, 0.75])).tolist()
    return int(single.sum()), q[1], q[0], q[2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", default="corpus", type=Path)
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=2_000_000)
    parser.add_argument("--heldout-tokens", type=int, default=100_000)
    parser.add_argument("--candidates", default="4096:32:1024,4096:32:4096,4096:16:4096,8192:32:4096",
                        help="width:k:batch,...")
    args = parser.parse_args()
    lm = load_model("default")
    per = 127
    split = token_chunks(args.corpus, lm.tokenizer, context=128,
                         train_windows=math.ceil(args.tokens / per),
                         heldout_windows=math.ceil(args.heldout_tokens / per), seed=0)
    t0 = time.perf_counter()
    train = collect_activations(lm, split.train, [args.layer], dtype="bfloat16")[args.layer]
    t1 = time.perf_counter()
    heldout = collect_activations(lm, split.heldout, [args.layer])[args.layer]
    print(json.dumps({"collect_tokens": len(train), "collect_tok_per_s": round(len(train) / (t1 - t0))}),
          flush=True)
    for spec in args.candidates.split(","):
        width, k, batch = (int(x) for x in spec.split(":"))
        config = TrainSaeConfig.build(layer=args.layer, width=width, k=k, batch_tokens=batch,
                                      tokens=len(train))
        t = time.perf_counter()
        sae, steps = train_in_memory(train, config)
        seconds = time.perf_counter() - t
        ve, l0, dead = evaluate(sae, heldout)
        n_single, med, q1, q3 = single_token_alignment(lm, sae, heldout, split.heldout, args.layer)
        print(json.dumps({"width": width, "k": k, "batch": batch, "tokens": len(train),
                          "train_tok_per_s": round(len(train) / seconds), "ve": round(ve, 4),
                          "l0": round(l0, 1), "dead": round(dead, 4), "single": n_single,
                          "align_median": round(med, 3), "align_q1": round(q1, 3),
                          "align_q3": round(q3, 3)}), flush=True)


if __name__ == "__main__":
    main()
