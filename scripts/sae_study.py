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

import torch

from selfexplain.corpus import token_chunks
from selfexplain.models import load_model
from selfexplain.sae_trainer import train_in_memory
from selfexplain.train_sae import TrainSaeConfig, collect_activations, encode, evaluate
from selfexplain.vectors import word_directions


def single_token_alignment(lm, sae, heldout, windows, layer):
    """(n single-token features, median, q1, q3 of their decoder/token cosine)."""
    per = windows.shape[1] - 1
    token_ids = windows[:, 1:].reshape(-1)
    values, indices = encode(sae, heldout.float())
    keep = values > 0
    feats = indices[keep]
    toks = token_ids[:, None].expand_as(indices)[keep]
    vals = values[keep].double()
    width = sae.W_dec.shape[0]
    vocab = int(token_ids.max()) + 1
    pair = feats * vocab + toks
    keys, inv = torch.unique(pair, return_inverse=True)
    mass = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, inv, vals)
    total = torch.zeros(width, dtype=torch.float64).index_add_(0, feats, vals)
    count = torch.bincount(feats, minlength=width)
    best = torch.zeros(width, dtype=torch.float64).scatter_reduce_(0, keys // vocab, mass, "amax")
    share = best / total.clamp_min(1e-12)
    single = torch.nonzero((share >= 0.5) & (count >= 5)).squeeze(1)
    top_tok = {}
    for key, m in zip(keys.tolist(), mass.tolist()):
        f = key // vocab
        if m == best[f] and f not in top_tok:
            top_tok[f] = key % vocab
    words = [lm.tokenizer.decode([top_tok[f]]) for f in single.tolist()]
    ok = [i for i, w in enumerate(words) if w.strip()]
    dirs = word_directions(lm, [words[i] for i in ok], layer)
    rows = sae.W_dec[single[ok]].float()
    cos = (rows / rows.norm(dim=-1, keepdim=True) * dirs).sum(-1)
    q = torch.quantile(cos, torch.tensor([0.25, 0.5, 0.75])).tolist()
    return len(single), q[1], q[0], q[2]


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
