"""Statistics, typical inputs and held-out examples of every latent of any SAE, streamed.

`collect` runs a corpus through the model up to the SAE's layer and through the SAE's encoder,
chunk by chunk, and keeps only running aggregates, so memory stays at one chunk of activations
plus a fixed state per latent however many tokens are read:

- from the **training documents** of the corpus: density, mean and max activation, the activation
  mass per (latent, token) (top tokens, single-token flag), the top activating contexts with each
  window's tokens and per-token activations, and the typical input (the activation-weighted mean
  of the mean-free residuals the latent fires on, `stats.typical_inputs`, accumulated as
  sum(a x) - mean(x) sum(a));
- from the **held-out documents** (disjoint): examples of `example_tokens` tokens, and for each
  latent a uniform sample of the examples it fires on (the `heldout_per_latent` with the smallest
  hash of the example id: one hash for every latent, so the samples overlap and the union stays
  small), plus a pool of random examples; for every stored example, the max activation of every
  latent that fires in it, so "not activating" is known exactly for any latent on any stored
  example (random and hard negatives for label scoring).

The state is saved after chunks (atomically) and a rerun of the same collect resumes from it; the
result is the same as an uninterrupted run, bit for bit.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from selfexplain.errors import InputError, build_validated
from selfexplain.models import LoadedModel
from selfexplain.feature_stats import (
    CONTEXT_LEFT,
    CONTEXT_RIGHT,
    N_CONTEXTS,
    N_TOP_TOKENS,
    SCHEMA,
    SINGLE_TOKEN_MIN_FIRINGS,
    SINGLE_TOKEN_SHARE,
)

FORMAT_VERSION = 2
"""Bumped when what collect writes changes meaning: older results are then collected again.
2: each latent's held-out sample carries its per-token activations (fuzzing)."""
HELDOUT_EXAMPLES_FILE = "heldout_examples.parquet"
HELDOUT_LATENTS_FILE = "heldout_latents.parquet"
MANIFEST_FILE = "manifest.json"
STATE_FILE = "state.pt"
WINDOW = CONTEXT_LEFT + 1 + CONTEXT_RIGHT
"""Tokens kept around each top context: 12 before the firing token, 4 after (as shown)."""


class CollectConfig(BaseModel):
    """Every setting of one collect run (validated once at the edge)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tokens: int = Field(1_000_000, ge=1)
    """Activations read from the training documents (position 0 of each window, the attention
    sink, is dropped); capped by the corpus."""
    heldout_tokens: int = Field(250_000, ge=0)
    """Activations read from the held-out documents for label scoring."""
    context: int | None = Field(None, ge=2, le=8192)
    """Tokens per window; None = the SAE's own training context, at most 256."""
    seed: int | None = None
    """Document split seed; None = the seed the SAE was trained with when it says, else 0 (so the
    held-out documents of an SAE trained here are the ones it never saw)."""
    example_tokens: int = Field(32, ge=2)
    """Tokens per held-out example (delphi's default context for scoring)."""
    heldout_per_latent: int = Field(64, ge=1)
    """Activating held-out examples kept per latent (a uniform sample of all it fires on)."""
    random_examples: int = Field(1024, ge=0)
    """Held-out examples kept as a uniform random pool (random negatives)."""
    chunk_tokens: int = Field(65_536, ge=1)
    """Activations per chunk: what is in memory at once."""
    forward_batch: int = Field(16, ge=1)
    encode_batch: int = Field(4096, ge=1)
    dtype: Literal["float32", "bfloat16"] = "float32"
    """The model's matmul precision while reading activations (bfloat16: CPU autocast)."""
    max_pairs: int = Field(8_000_000, ge=1024)
    """Distinct (latent, token) pairs kept for top tokens; past it each latent keeps its heaviest
    256 tokens (top tokens stay exact unless a latent fires on more than 256 distinct tokens
    with a long tail)."""
    checkpoint_seconds: float = Field(30.0, ge=0)
    """Save the state when this long has passed since the last save (0: after every chunk)."""

    @classmethod
    def build(cls, **values: object) -> "CollectConfig":
        return build_validated(cls, values)


@dataclass(frozen=True)
class SaeEncoder:
    """What collect needs of an SAE: its encoder and where it reads the residual stream."""

    encode: Callable[[Tensor], Tensor]
    """(n, d_in) float32 residuals -> (n, d_sae) activations (>= 0, mostly zero)."""
    decoder: Tensor  # (d_sae, d_in)
    resid_layer: int
    """The block whose input residual the SAE reads."""
    hook_name: str
    context_size: int | None = None
    seed: int | None = None
    """The corpus split seed of the SAE's training run, when it was trained here."""

    @property
    def d_sae(self) -> int:
        return int(self.decoder.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.decoder.shape[1])


@dataclass(frozen=True)
class CollectResult:
    folder: Path
    manifest: dict
    resumed: bool
    reused: bool


# ---------------------------------------------------------------------------------------------
# Running aggregates over the training documents


def _topk_per_group(groups: Tensor, values: Tensor, positions: Tensor, k: int, n_groups: int,
                    ) -> Tensor:
    """Indices of the `k` largest `values` per group (ties: smaller position first), ordered by
    (group, value desc, position)."""
    order = torch.argsort(positions, stable=True)
    order = order[torch.argsort(values[order], descending=True, stable=True)]
    order = order[torch.argsort(groups[order], stable=True)]
    counts = torch.bincount(groups, minlength=n_groups)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order)) - starts[groups[order]]
    return order[rank < k]


class TrainAccumulator:
    """Per-latent aggregates over sparse activations, merged chunk by chunk."""

    def __init__(self, d_sae: int, d_model: int, vocab: int, *, n_contexts: int = N_CONTEXTS,
                 max_pairs: int = 8_000_000):
        self.d_sae, self.d_model, self.vocab = d_sae, d_model, vocab
        self.n_contexts, self.max_pairs = n_contexts, max_pairs
        self.n_tokens = 0
        self.counts = torch.zeros(d_sae, dtype=torch.int64)
        self.sums = torch.zeros(d_sae, dtype=torch.float64)
        self.maxes = torch.zeros(d_sae, dtype=torch.float64)
        self.weighted = torch.zeros(d_sae, d_model, dtype=torch.float64)  # sum of a * x
        self.x_sum = torch.zeros(d_model, dtype=torch.float64)
        self.pair_keys = torch.zeros(0, dtype=torch.int64)  # latent * vocab + token, sorted
        self.pair_sums = torch.zeros(0, dtype=torch.float64)
        k = n_contexts
        self.top_val = torch.full((d_sae, k), -math.inf, dtype=torch.float64)
        self.top_pos = torch.full((d_sae, k), -1, dtype=torch.int64)  # flat index in the stream
        self.top_tokens = torch.full((d_sae, k, WINDOW), -1, dtype=torch.int64)
        self.top_acts = torch.zeros(d_sae, k, WINDOW, dtype=torch.float32)

    def state(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in (
            "n_tokens", "counts", "sums", "maxes", "weighted", "x_sum", "pair_keys", "pair_sums",
            "top_val", "top_pos", "top_tokens", "top_acts")}

    def load(self, state: dict[str, object]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def update(self, windows: Tensor, first_window: int, acts: Tensor, rows: Tensor,
               feats: Tensor, vals: Tensor) -> None:
        """Merge one chunk.

        windows: (n, context) token ids, stream windows first_window .. first_window + n - 1.
        acts: (n * (context - 1), d_model) residuals (position 0 of each window dropped).
        rows, feats, vals: (nnz,) activation row, latent, activation > 0.
        """
        n, context = windows.shape
        per = context - 1
        local = (rows // per) * context + rows % per + 1  # flat index into `windows`
        flat = local + first_window * context  # ... into the whole stream
        feats = feats.long()
        vals64 = vals.double()
        self.n_tokens += int(acts.shape[0])
        self.counts += torch.bincount(feats, minlength=self.d_sae)
        self.sums.index_add_(0, feats, vals64)
        self.maxes = torch.maximum(self.maxes, torch.zeros_like(self.maxes).scatter_reduce_(
            0, feats, vals64, "amax"))
        self.x_sum += acts.double().sum(0)
        codes = torch.sparse_coo_tensor(torch.stack([feats, rows]), vals.float(),
                                        (self.d_sae, acts.shape[0]), check_invariants=False)
        self.weighted += torch.sparse.mm(codes, acts.float()).double()  # (d_sae, d_model)
        tokens = windows.reshape(-1)[local]
        self._merge_pairs(feats * self.vocab + tokens, vals64)
        self._merge_contexts(windows, first_window, local, flat, feats, vals, vals64)

    def _merge_pairs(self, keys: Tensor, vals: Tensor) -> None:
        keys = torch.cat([self.pair_keys, keys])
        vals = torch.cat([self.pair_sums, vals])
        self.pair_keys, inverse = torch.unique(keys, return_inverse=True)
        self.pair_sums = torch.zeros(len(self.pair_keys), dtype=torch.float64).index_add_(
            0, inverse, vals)
        if len(self.pair_keys) > self.max_pairs:  # keep each latent's heaviest tokens
            keep = _topk_per_group(self.pair_keys // self.vocab, self.pair_sums,
                                   self.pair_keys, 256, self.d_sae)
            keep = torch.sort(keep).values
            self.pair_keys, self.pair_sums = self.pair_keys[keep], self.pair_sums[keep]

    def _merge_contexts(self, windows: Tensor, first_window: int, local: Tensor, flat: Tensor,
                        feats: Tensor, vals: Tensor, vals64: Tensor) -> None:
        k = self.n_contexts
        best = _topk_per_group(feats, vals64, flat, k, self.d_sae)  # this chunk's best first
        c_feat, c_flat, c_local, c_val = feats[best], flat[best], local[best], vals64[best]
        n, context = windows.shape
        # the window around each candidate, and the latent's activation on each of its tokens
        offsets = torch.arange(-CONTEXT_LEFT, CONTEXT_RIGHT + 1)  # (WINDOW,)
        where = c_local[:, None] + offsets  # (m, WINDOW) flat index into `windows`
        same = (where >= 0) & (where // context == (c_local // context)[:, None])
        ids = torch.where(same, windows.reshape(-1)[where.clamp(0, n * context - 1)], -1)
        chunk_keys, order = torch.sort(feats * (n * context) + local)
        query = c_feat[:, None] * (n * context) + where
        hit = torch.searchsorted(chunk_keys, query).clamp(max=len(chunk_keys) - 1)
        found = same & (chunk_keys[hit] == query)
        acts = torch.where(found, vals.float()[order][hit], 0.0)
        # merge with the running top: rows of the state first, then candidates
        s_feat = torch.arange(self.d_sae).repeat_interleave(k)
        valid = self.top_pos.reshape(-1) >= 0
        all_feat = torch.cat([s_feat[valid], c_feat])
        all_val = torch.cat([self.top_val.reshape(-1)[valid], c_val])
        all_pos = torch.cat([self.top_pos.reshape(-1)[valid], c_flat])
        all_ids = torch.cat([self.top_tokens.reshape(-1, WINDOW)[valid], ids])
        all_acts = torch.cat([self.top_acts.reshape(-1, WINDOW)[valid], acts])
        keep = _topk_per_group(all_feat, all_val, all_pos, k, self.d_sae)
        kept_feat = all_feat[keep]
        counts = torch.bincount(kept_feat, minlength=self.d_sae)
        slot = torch.arange(len(keep)) - (torch.cumsum(counts, 0) - counts)[kept_feat]
        self.top_val = torch.full_like(self.top_val, -math.inf)
        self.top_pos = torch.full_like(self.top_pos, -1)
        self.top_tokens = torch.full_like(self.top_tokens, -1)
        self.top_acts = torch.zeros_like(self.top_acts)
        self.top_val[kept_feat, slot] = all_val[keep]
        self.top_pos[kept_feat, slot] = all_pos[keep]
        self.top_tokens[kept_feat, slot] = all_ids[keep]
        self.top_acts[kept_feat, slot] = all_acts[keep]

    def typical_inputs(self) -> Tensor:
        """(d_sae, d_model): sum(a (x - mean)) / sum(a); a zero row for a latent never seen."""
        mean = self.x_sum / max(self.n_tokens, 1)
        centred = self.weighted - self.sums[:, None] * mean[None, :]
        return (centred / self.sums.clamp_min(1e-12)[:, None]).float()

    def frame(self, decode: Callable[[list[int]], str]) -> pl.DataFrame:
        """The statistics in `feature_stats.SCHEMA` (vocabproj and token alignment left to the caller),
        plus `top_context_windows`: each context's tokens and the latent's activation on each."""
        if self.n_tokens <= 0:
            raise InputError("feature statistics need at least one token")
        pair_feat = self.pair_keys // self.vocab
        tops = _topk_per_group(pair_feat, self.pair_sums, self.pair_keys % self.vocab,
                               N_TOP_TOKENS, self.d_sae)
        top_counts = torch.bincount(pair_feat[tops], minlength=self.d_sae).tolist()
        top_tok = (self.pair_keys[tops] % self.vocab).tolist()
        top_mass = self.pair_sums[tops].tolist()
        counts, sums, maxes = self.counts.tolist(), self.sums.tolist(), self.maxes.tolist()
        top_val, top_ids, top_acts = (self.top_val.tolist(), self.top_tokens.tolist(),
                                      self.top_acts.tolist())
        rows: dict[str, list] = {name: [] for name in SCHEMA}
        rows["top_context_windows"] = []
        cursor = 0
        for f in range(self.d_sae):
            n_f = counts[f]
            tokens = top_tok[cursor:cursor + top_counts[f]]
            share = top_mass[cursor] / sums[f] if top_counts[f] and sums[f] > 0 else 0.0
            cursor += top_counts[f]
            contexts, windows = [], []
            for slot in range(self.n_contexts):
                if top_val[f][slot] == -math.inf:
                    break
                ids = top_ids[f][slot]
                left = [t for t in ids[:CONTEXT_LEFT] if t >= 0]
                right = [t for t in ids[CONTEXT_LEFT + 1:] if t >= 0]
                here = ids[CONTEXT_LEFT]
                contexts.append({"text": decode(left) + "«" + decode([here]) + "»" + decode(right),
                                 "activation": top_val[f][slot]})
                kept = [i for i, t in enumerate(ids) if t >= 0]
                windows.append({"tokens": [decode([ids[i]]) for i in kept],
                                "activations": [top_acts[f][slot][i] for i in kept],
                                "at": kept.index(CONTEXT_LEFT)})
            rows["feature"].append(f)
            rows["density"].append(n_f / self.n_tokens)
            rows["mean_activation"].append(sums[f] / n_f if n_f else 0.0)
            rows["max_activation"].append(maxes[f])
            rows["top_tokens"].append([decode([t]) for t in tokens])
            rows["top_token_share"].append(share)
            rows["single_token"].append(share >= SINGLE_TOKEN_SHARE and n_f >= SINGLE_TOKEN_MIN_FIRINGS)
            rows["vocabproj_tokens"].append([])
            rows["top_contexts"].append(contexts)
            rows["token_alignment"].append(None)
            rows["top_context_windows"].append(windows)
        return pl.DataFrame(rows, schema={**SCHEMA, "top_context_windows": CONTEXT_WINDOWS})


CONTEXT_WINDOWS = pl.List(pl.Struct({"tokens": pl.List(pl.String),
                                     "activations": pl.List(pl.Float64), "at": pl.Int64}))


# ---------------------------------------------------------------------------------------------
# Held-out examples: a coordinated uniform sample per latent


def example_hash(ids: Tensor, seed: int) -> Tensor:
    """A 62-bit hash (splitmix64) of example ids: the sampling key shared by every latent."""
    x = ids.numpy().astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return torch.from_numpy((x >> np.uint64(2)).astype(np.int64))


class HeldoutSampler:
    """Per latent, the `per_latent` activating examples of smallest hash; a random pool; and every
    stored example's tokens and (latent, max activation) pairs."""

    def __init__(self, d_sae: int, *, example_tokens: int, per_latent: int, random_examples: int,
                 seed: int):
        self.d_sae, self.example_tokens = d_sae, example_tokens
        self.per_latent, self.random_examples, self.seed = per_latent, random_examples, seed
        self.n_examples = 0
        self.n_tokens = 0
        self.fired = torch.zeros(d_sae, dtype=torch.int64)
        big = torch.iinfo(torch.int64).max
        self.best_hash = torch.full((d_sae, per_latent), big, dtype=torch.int64)
        self.best_example = torch.full((d_sae, per_latent), -1, dtype=torch.int64)
        self.random_hash = torch.zeros(0, dtype=torch.int64)
        self.random_example = torch.zeros(0, dtype=torch.int64)
        self.store_ids = torch.zeros(0, dtype=torch.int64)  # sorted
        self.store_tokens = torch.zeros(0, example_tokens, dtype=torch.int64)
        self.store_pair_example = torch.zeros(0, dtype=torch.int64)
        self.store_pair_feature = torch.zeros(0, dtype=torch.int64)
        self.store_pair_max = torch.zeros(0, dtype=torch.float32)
        # per-token activations of every (latent, example) pair in a latent's sample
        self.tok_example = torch.zeros(0, dtype=torch.int64)
        self.tok_feature = torch.zeros(0, dtype=torch.int64)
        self.tok_position = torch.zeros(0, dtype=torch.int64)
        self.tok_value = torch.zeros(0, dtype=torch.float32)

    def state(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in (
            "n_examples", "n_tokens", "fired", "best_hash", "best_example", "random_hash",
            "random_example", "store_ids", "store_tokens", "store_pair_example",
            "store_pair_feature", "store_pair_max", "tok_example", "tok_feature", "tok_position",
            "tok_value")}

    def load(self, state: dict[str, object]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def examples_per_window(self, context: int) -> int:
        return -(-(context - 1) // self.example_tokens)

    def update(self, windows: Tensor, first_window: int, rows: Tensor, feats: Tensor,
               vals: Tensor) -> None:
        """Merge one chunk: windows (n, context); rows, feats, vals as in TrainAccumulator."""
        n, context = windows.shape
        per, e = context - 1, self.example_tokens
        per_window = self.examples_per_window(context)
        self.n_tokens += n * per
        first = first_window * per_window
        chunk_ids = first + torch.arange(n * per_window)
        self.n_examples = max(self.n_examples, int(chunk_ids[-1]) + 1) if n else self.n_examples
        # tokens of each example: positions 1 + e*j .. of its window (the last one may be short)
        pos = 1 + torch.arange(per_window)[:, None] * e + torch.arange(e)  # (per_window, e)
        tokens = torch.where(pos < context, windows[:, pos.clamp(max=context - 1)], -1)
        tokens = tokens.reshape(n * per_window, e)
        # the max activation of each latent in each example
        example = first + (rows // per) * per_window + (rows % per) // e
        keys = (example - first) * self.d_sae + feats.long()
        unique, inverse = torch.unique(keys, return_inverse=True)
        maxes = torch.zeros(len(unique), dtype=torch.float32).scatter_reduce_(
            0, inverse, vals.float(), "amax", include_self=False)
        p_example = unique // self.d_sae + first
        p_feat = unique % self.d_sae
        self.fired += torch.bincount(p_feat, minlength=self.d_sae)
        hashes = example_hash(chunk_ids, self.seed)  # (n * per_window,)
        # each latent's sample: smallest hashes among the examples it fires on
        s_feat = torch.arange(self.d_sae).repeat_interleave(self.per_latent)
        valid = self.best_example.reshape(-1) >= 0
        all_feat = torch.cat([s_feat[valid], p_feat])
        all_hash = torch.cat([self.best_hash.reshape(-1)[valid], hashes[p_example - first]])
        all_example = torch.cat([self.best_example.reshape(-1)[valid], p_example])
        keep = _topk_per_group(all_feat, -all_hash, all_example, self.per_latent, self.d_sae)
        kept_feat, kept_hash, kept_example = all_feat[keep], all_hash[keep], all_example[keep]
        counts = torch.bincount(kept_feat, minlength=self.d_sae)
        slot = torch.arange(len(kept_feat)) - (torch.cumsum(counts, 0) - counts)[kept_feat]
        self.best_hash = torch.full_like(self.best_hash, torch.iinfo(torch.int64).max)
        self.best_example = torch.full_like(self.best_example, -1)
        self.best_hash[kept_feat, slot] = kept_hash
        self.best_example[kept_feat, slot] = kept_example
        # token-level activations of the pairs now sampled: old ones kept, this chunk's added
        sampled = kept_example * self.d_sae + kept_feat
        old = torch.isin(self.tok_example * self.d_sae + self.tok_feature, sampled)
        new = torch.isin(example * self.d_sae + feats.long(), sampled)
        self.tok_example = torch.cat([self.tok_example[old], example[new]])
        self.tok_feature = torch.cat([self.tok_feature[old], feats.long()[new]])
        self.tok_position = torch.cat([self.tok_position[old], ((rows % per) % e)[new]])
        self.tok_value = torch.cat([self.tok_value[old], vals.float()[new]])
        # the random pool: smallest hashes overall
        pool_hash = torch.cat([self.random_hash, hashes])
        pool_example = torch.cat([self.random_example, chunk_ids])
        order = torch.argsort(pool_example, stable=True)
        order = order[torch.argsort(pool_hash[order], stable=True)][:self.random_examples]
        self.random_hash, self.random_example = pool_hash[order], pool_example[order]
        # the store: every example some latent's sample or the pool still needs
        needed = torch.unique(torch.cat([self.best_example[self.best_example >= 0],
                                         self.random_example]))
        keep_old = torch.isin(self.store_ids, needed)
        keep_new = torch.isin(chunk_ids, needed)
        new_pairs = torch.isin(p_example, chunk_ids[keep_new])
        old_pairs = torch.isin(self.store_pair_example, self.store_ids[keep_old])
        ids = torch.cat([self.store_ids[keep_old], chunk_ids[keep_new]])
        order = torch.argsort(ids)
        self.store_ids = ids[order]
        self.store_tokens = torch.cat([self.store_tokens[keep_old], tokens[keep_new]])[order]
        self.store_pair_example = torch.cat([self.store_pair_example[old_pairs], p_example[new_pairs]])
        self.store_pair_feature = torch.cat([self.store_pair_feature[old_pairs], p_feat[new_pairs]])
        self.store_pair_max = torch.cat([self.store_pair_max[old_pairs], maxes[new_pairs]])

    def frames(self, decode: Callable[[list[int]], str]) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(examples, latents). examples: one row per stored example with its tokens, text,
        whether it is in the random pool, and the latents firing in it with their max activation.
        latents: per latent its sample (example ids, smallest hash first), their max activations
        and how many held-out examples it fired on in all."""
        order = torch.argsort(self.store_pair_example * self.d_sae + self.store_pair_feature)
        p_ex = self.store_pair_example[order]
        p_feat, p_max = self.store_pair_feature[order].tolist(), self.store_pair_max[order].tolist()
        row_of = torch.searchsorted(self.store_ids, p_ex).tolist()
        feats: list[list[int]] = [[] for _ in range(len(self.store_ids))]
        maxes: list[list[float]] = [[] for _ in range(len(self.store_ids))]
        for r, f, m in zip(row_of, p_feat, p_max):
            feats[r].append(f)
            maxes[r].append(m)
        pool = set(self.random_example.tolist())
        tokens = [[t for t in row if t >= 0] for row in self.store_tokens.tolist()]
        ids = self.store_ids.tolist()
        examples = pl.DataFrame({
            "example": ids,
            "hash": example_hash(self.store_ids, self.seed).tolist() if ids else [],
            "random": [i in pool for i in ids],
            "tokens": tokens,
            "text": [decode(t) for t in tokens],
            "token_texts": [[decode([t]) for t in row] for row in tokens],
            "features": feats,
            "max_activations": maxes,
        }, schema={"example": pl.Int64, "hash": pl.Int64, "random": pl.Boolean,
                   "tokens": pl.List(pl.Int64), "text": pl.String,
                   "token_texts": pl.List(pl.String), "features": pl.List(pl.Int64),
                   "max_activations": pl.List(pl.Float32)})
        lookup = {(e, f): m for e, f, m in zip(p_ex.tolist(), p_feat, p_max)}
        samples = [[e for e in row if e >= 0] for row in self.best_example.tolist()]
        tokens_of: dict[tuple[int, int], tuple[list[int], list[float]]] = {}
        order = torch.argsort(self.tok_position, stable=True)
        for e, f, p, v in zip(self.tok_example[order].tolist(), self.tok_feature[order].tolist(),
                              self.tok_position[order].tolist(), self.tok_value[order].tolist()):
            entry = tokens_of.setdefault((e, f), ([], []))
            entry[0].append(p)
            entry[1].append(v)
        latents = pl.DataFrame({
            "feature": list(range(self.d_sae)),
            "examples": samples,
            "max_activations": [[lookup[(e, f)] for e in row] for f, row in enumerate(samples)],
            "positions": [[tokens_of[(e, f)][0] for e in row] for f, row in enumerate(samples)],
            "activations": [[tokens_of[(e, f)][1] for e in row] for f, row in enumerate(samples)],
            "n_fired": self.fired.tolist(),
        }, schema={"feature": pl.Int64, "examples": pl.List(pl.Int64),
                   "max_activations": pl.List(pl.Float32),
                   "positions": pl.List(pl.List(pl.Int64)),
                   "activations": pl.List(pl.List(pl.Float32)), "n_fired": pl.Int64})
        return examples, latents


# ---------------------------------------------------------------------------------------------
# The run


@torch.inference_mode()
def sparse_codes(encoder: SaeEncoder, acts: Tensor, batch: int) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, latents, values) of the nonzero activations of `acts` (n, d_in)."""
    parts = []
    for start in range(0, acts.shape[0], batch):
        codes = encoder.encode(acts[start:start + batch].float())  # (b, d_sae)
        if not torch.isfinite(codes).all():
            raise InputError("the SAE's encoder returned NaN or infinity on this model's "
                             "residuals: its weights are damaged or it belongs to another model")
        rows, feats = torch.nonzero(codes > 0, as_tuple=True)
        parts.append((rows + start, feats, codes[rows, feats].float()))
    if not parts:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty, torch.zeros(0)
    return tuple(torch.cat(t) for t in zip(*parts))  # type: ignore[return-value]


def chunked(windows: Iterator[list[int]], size: int, limit: int) -> Iterator[list[list[int]]]:
    taken = 0
    while taken < limit:
        chunk = list(itertools.islice(windows, min(size, limit - taken)))
        if not chunk:
            return
        taken += len(chunk)
        yield chunk


def resolve(config: CollectConfig, encoder: SaeEncoder) -> tuple[int, int]:
    """(context, seed) of this run: the config's, else the SAE's own."""
    context = config.context or min(encoder.context_size or 128, 256)
    seed = config.seed if config.seed is not None else (encoder.seed or 0)
    return context, seed


def collect(lm: LoadedModel, encoder: SaeEncoder, source, config: CollectConfig, folder: Path,
            *, key: dict[str, object], progress: Callable[[int, int, str], None] | None = None,
            stop_after_chunks: int | None = None) -> CollectResult | None:
    """Run `source` (a documents.DocumentSource) through model and SAE; write into `folder`.

    `key` (what identifies this collect) is written to the manifest and checked against a saved
    state before resuming. `progress(done_tokens, total_tokens, phase)` is called per chunk.
    Returns None when `stop_after_chunks` stopped it early (the state is saved)."""
    from selfexplain.documents import token_windows
    from selfexplain.train_sae import collect_activations

    folder = Path(folder)
    if (folder / MANIFEST_FILE).is_file():
        return CollectResult(folder, json.loads((folder / MANIFEST_FILE).read_text()), False, True)
    if encoder.d_in != lm.d_model:
        raise InputError(f"the SAE reads {encoder.d_in}-wide residuals but {lm.model_id}'s "
                         f"residual stream is {lm.d_model}: pick the SAE trained on this model")
    if not 0 <= encoder.resid_layer < lm.n_layers:
        raise InputError(f"the SAE hooks {encoder.hook_name} but {lm.model_id} has blocks "
                         f"0..{lm.n_layers - 1}: pick the SAE trained on this model")
    context, seed = resolve(config, encoder)
    per = context - 1
    folder.mkdir(parents=True, exist_ok=True)
    vocab = int(lm.model.get_input_embeddings().weight.shape[0])
    train = TrainAccumulator(encoder.d_sae, encoder.d_in, max(vocab, len(lm.tokenizer)),
                             max_pairs=config.max_pairs)
    heldout = HeldoutSampler(encoder.d_sae, example_tokens=config.example_tokens,
                             per_latent=config.heldout_per_latent,
                             random_examples=config.random_examples, seed=seed)
    position = {"train": 0, "heldout": 0, "phase": "train", "seconds": 0.0}
    resumed = _resume(folder, key, train, heldout, position)
    chunk_windows = max(1, config.chunk_tokens // per)
    budgets = {"train": -(-config.tokens // per), "heldout": -(-config.heldout_tokens // per)}
    total = budgets["train"] * per + budgets["heldout"] * per
    began, last_save, chunks = time.perf_counter() - position["seconds"], time.perf_counter(), 0
    if not resumed:  # an empty or too-short corpus: say so before the first forward pass
        _check_corpus(source, lm.tokenizer, context, config.heldout_tokens > 0)
    phases = ["train", "heldout"][["train", "heldout"].index(position["phase"]):]
    for phase in phases:
        if position["phase"] != phase:
            position["phase"] = phase
        done = position[phase]
        stream = itertools.islice(token_windows(source, phase, lm.tokenizer, context), done, None)
        for chunk in chunked(stream, chunk_windows, budgets[phase] - done):
            windows = torch.tensor(chunk, dtype=torch.long)  # (n, context)
            acts = collect_activations(lm, windows, [encoder.resid_layer],
                                       batch=config.forward_batch, desc=f"collect {phase}",
                                       dtype=config.dtype, progress=False)[encoder.resid_layer]
            rows, feats, vals = sparse_codes(encoder, acts, config.encode_batch)
            if phase == "train":
                train.update(windows, position[phase], acts, rows, feats, vals)
            else:
                heldout.update(windows, position[phase], rows, feats, vals)
            position[phase] += len(chunk)
            chunks += 1
            if progress is not None:
                progress(len(chunk) * per, total, phase)
            now = time.perf_counter()
            stop = stop_after_chunks is not None and chunks >= stop_after_chunks
            if stop or now - last_save >= config.checkpoint_seconds:
                position["seconds"] = now - began
                _save_state(folder, key, train, heldout, position)
                last_save = now
            if stop:
                return None
    seconds = time.perf_counter() - began
    _write_results(lm, encoder, folder, train, heldout, key, dict(
        context=context, seed=seed, train_tokens=train.n_tokens, train_windows=position["train"],
        heldout_tokens=heldout.n_tokens, heldout_windows=position["heldout"],
        heldout_examples=heldout.n_examples, seconds=round(seconds, 1),
        tokens_per_second=round((train.n_tokens + heldout.n_tokens) / max(seconds, 1e-9), 1)))
    return CollectResult(folder, json.loads((folder / MANIFEST_FILE).read_text()), resumed, False)


def _check_corpus(source, tokenizer, context: int, need_heldout: bool) -> None:
    """InputError naming how many tokens a split had when it holds not one full window."""
    from selfexplain.documents import token_windows

    for split in ("train", "heldout") if need_heldout else ("train",):
        if next(token_windows(source, split, tokenizer, context), None) is None:
            docs = [d for stream in source.streams(split).values() for d in stream]
            tokens = sum(len(tokenizer.encode(d, add_special_tokens=False)) for d in docs)
            what = "training" if split == "train" else "held-out"
            hint = ("; pass --heldout-tokens 0 to skip the held-out examples"
                    if split == "heldout" else "")
            raise InputError(f"corpus {source.spec} is too short: its {what} documents hold "
                             f"{tokens} tokens in {len(docs)} documents, less than one window of "
                             f"{context}: add text{hint}")


def _save_state(folder: Path, key: dict, train: TrainAccumulator, heldout: HeldoutSampler,
                position: dict) -> None:
    partial = folder / (STATE_FILE + ".partial")
    torch.save({"key": key, "train": train.state(), "heldout": heldout.state(),
                "position": dict(position)}, partial)
    partial.replace(folder / STATE_FILE)


def _resume(folder: Path, key: dict, train: TrainAccumulator, heldout: HeldoutSampler,
            position: dict) -> bool:
    path = folder / STATE_FILE
    if not path.is_file():
        return False
    try:
        state = torch.load(path, weights_only=True)
    except Exception:  # a torn file from a kill during the save: start again
        path.unlink(missing_ok=True)
        return False
    if state.get("key") != key:
        path.unlink(missing_ok=True)
        return False
    train.load(state["train"])
    heldout.load(state["heldout"])
    position.update(state["position"])
    return True


def _write_results(lm: LoadedModel, encoder: SaeEncoder, folder: Path, train: TrainAccumulator,
                   heldout: HeldoutSampler, key: dict, facts: dict) -> None:
    """Every file, then the manifest last (its presence marks a complete collect)."""
    from safetensors.torch import save_file

    from selfexplain.feature_stats import token_alignment, vocab_projection

    decode = lambda ids: lm.tokenizer.decode(ids)  # noqa: E731
    directions = encoder.decoder.float()
    directions = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    frame = train.frame(decode).with_columns(
        pl.Series("vocabproj_tokens", vocab_projection(lm, directions),
                  dtype=SCHEMA["vocabproj_tokens"]))
    frame = token_alignment(lm, directions, frame, encoder.resid_layer)
    examples, latents = heldout.frames(decode)
    writes = {
        "feature_stats.parquet": frame.write_parquet,
        "typical_inputs.safetensors": lambda p: save_file(
            {"typical_inputs": train.typical_inputs().half().contiguous()}, str(p)),
        HELDOUT_EXAMPLES_FILE: examples.write_parquet,
        HELDOUT_LATENTS_FILE: latents.write_parquet,
    }
    for name, write in writes.items():
        partial = folder / (name + ".partial")
        write(partial)
        partial.chmod(0o644)
        partial.replace(folder / name)
    dead = int((train.counts == 0).sum())
    manifest = {"format": FORMAT_VERSION, **key, **facts, "d_sae": encoder.d_sae,
                "hook_name": encoder.hook_name, "resid_layer": encoder.resid_layer,
                "dead_latents": dead, "single_token_latents": int(frame["single_token"].sum()),
                "created_by_pid": os.getpid()}
    partial = folder / (MANIFEST_FILE + ".partial")
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    partial.replace(folder / MANIFEST_FILE)
    (folder / STATE_FILE).unlink(missing_ok=True)
