"""Match the features of two SAEs by decoder direction, so a new SAE version reuses old labels.

A new SAE is often a retrain of one already labelled (same model, same hook): many of its decoder
rows are nearly the old ones. Two features *match* when each is the other's nearest neighbour by
decoder cosine (mutual nearest neighbours) and the cosine clears a threshold; a matched feature
can carry the old label over as a provisional one instead of being explained again.

Plain torch: the cosines are computed a block of rows at a time (one matmul each) with a running
top-k, so memory stays at `block x n_old` whatever the widths; 16k x 16k at d 2304 is ~3 s on two
CPU cores. Nothing here touches the warehouse or Prefect.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from torch import Tensor

from selfexplain.errors import InputError

DEFAULT_MATCH_THRESHOLD = 0.7
"""Carry a label over at decoder cosine >= this. Set from docs/carryover.md (default SAE vs a
second seed): from .7 up every nearest pair was mutual and a carried label agreed with a fresh one
46% of the time against 54% for two fresh labels of the same feature; from .5 to .7, 55% vs 75%;
under .5, 25% vs 65%."""


def unit_rows(decoder: Tensor) -> Tensor:
    """(n, d) float32 rows scaled to unit norm; zero or non-finite rows become zero (they match
    nothing: their cosine with everything is 0)."""
    rows = decoder.detach().float()
    rows = torch.where(torch.isfinite(rows).all(dim=1, keepdim=True), rows, torch.zeros_like(rows))
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)


def nearest(queries: Tensor, keys: Tensor, k: int = 1, block: int = 4096) -> tuple[Tensor, Tensor]:
    """For each unit row of `queries` (n_q, d), its k most similar unit rows of `keys` (n_k, d):
    (cosines (n_q, k) descending, indices (n_q, k)). Blocked over the queries."""
    k = min(k, keys.shape[0])
    values = torch.empty(queries.shape[0], k)
    indices = torch.empty(queries.shape[0], k, dtype=torch.long)
    for start in range(0, queries.shape[0], block):
        sims = queries[start:start + block] @ keys.T  # (block, n_k)
        top = sims.topk(k, dim=1)
        values[start:start + block] = top.values
        indices[start:start + block] = top.indices
    return values, indices


@dataclass(frozen=True)
class Matches:
    """The neighbours of a new SAE's features among an old SAE's."""

    cosine: Tensor  # (n_new, k) cosine of each new feature with its k nearest old ones, descending
    source: Tensor  # (n_new, k) their old feature ids
    mutual: Tensor  # (n_new,) bool: the nearest old feature's nearest new feature is this one
    n_old: int
    threshold: float

    @property
    def matched(self) -> Tensor:
        """(n_new,) bool: mutual nearest neighbours with cosine >= threshold."""
        return self.mutual & (self.cosine[:, 0] >= self.threshold)

    def frame(self) -> pl.DataFrame:
        """One row per (new feature, rank): feature, source_feature, cosine, rank (1 = nearest),
        mutual and matched (both only ever true on rank 1)."""
        n, k = self.cosine.shape
        rank = torch.arange(1, k + 1).repeat(n)
        first = rank == 1
        return pl.DataFrame({
            "feature": torch.arange(n).repeat_interleave(k).numpy(),
            "source_feature": self.source.reshape(-1).numpy(),
            "cosine": self.cosine.reshape(-1).double().numpy(),
            "rank": rank.numpy(),
            "mutual": (self.mutual.repeat_interleave(k) & first).numpy(),
            "matched": (self.matched.repeat_interleave(k) & first).numpy(),
        }, schema={"feature": pl.Int32, "source_feature": pl.Int32, "cosine": pl.Float64,
                   "rank": pl.Int32, "mutual": pl.Boolean, "matched": pl.Boolean})

    def table_rows(self, *, release: str, sae_id: str, source_release: str, source_sae_id: str,
                   matched_at) -> pl.DataFrame:
        """`frame()` named for the warehouse's feature_match table: this SAE, its source SAE,
        the threshold in force and when."""
        return self.frame().with_columns(
            pl.lit(release).alias("release"), pl.lit(sae_id).alias("sae_id"),
            pl.lit(source_release).alias("source_release"),
            pl.lit(source_sae_id).alias("source_sae_id"),
            pl.lit(self.threshold).alias("threshold"), pl.lit(matched_at).alias("matched_at"))

    def summary(self) -> dict[str, int]:
        """Matched, new (no match in the old SAE) and vanished (old features nobody matched)."""
        matched = self.matched
        vanished = self.n_old - int(torch.unique(self.source[matched, 0]).numel())
        return {"matched": int(matched.sum()), "new": int((~matched).sum()), "vanished": vanished}


def check_threshold(threshold: float) -> float:
    if not (0.0 < threshold <= 1.0):
        raise InputError(f"match threshold {threshold} must be in (0, 1]: it is a decoder cosine")
    return float(threshold)


def match_features(new_decoder: Tensor, old_decoder: Tensor, *, threshold: float =
                   DEFAULT_MATCH_THRESHOLD, k: int = 3, block: int = 4096) -> Matches:
    """Match new decoder rows (n_new, d) against old ones (n_old, d) by cosine."""
    check_threshold(threshold)
    if new_decoder.ndim != 2 or old_decoder.ndim != 2 or new_decoder.shape[1] != old_decoder.shape[1]:
        raise InputError(f"cannot match SAEs of shapes {tuple(new_decoder.shape)} and "
                         f"{tuple(old_decoder.shape)}: they must read the same residual width")
    if new_decoder.shape[0] == 0 or old_decoder.shape[0] == 0:
        raise InputError("cannot match an SAE without features")
    new_unit, old_unit = unit_rows(new_decoder), unit_rows(old_decoder)
    cosine, source = nearest(new_unit, old_unit, k, block)  # (n_new, k)
    _, back = nearest(old_unit, new_unit, 1, block)  # (n_old, 1): each old row's nearest new row
    mutual = back[source[:, 0], 0] == torch.arange(new_unit.shape[0])
    mutual &= cosine[:, 0] > 0  # zero rows are nobody's neighbour
    return Matches(cosine=cosine, source=source, mutual=mutual, n_old=old_unit.shape[0],
                   threshold=threshold)


CARRIED_PREFIX = "carried:"
"""run_id of a carried label: `carried:<the source label's run_id>` (deterministic, so carrying
again upserts the same rows)."""

SOURCE_LABEL_COLUMNS = ["release", "sae_id", "feature", "run_id", "label", "top_labels",
                        "recovered_token", "recovered_reliable", "scale", "composite", "score",
                        "max_selfsim", "max_selfsim_repeat", "max_roundtrip", "failed",
                        "failure_reason", "model_id", "model_revision", "preset", "settings_hash",
                        "labelled_at"]


def best_sources(matches: pl.DataFrame) -> pl.DataFrame:
    """Of the matched pairs (feature_match rows of every source SAE), the best source per feature:
    the highest cosine, ties to the lexically first source. Columns: feature, source_release,
    source_sae_id, source_feature, cosine."""
    return (matches.filter(pl.col("matched") & (pl.col("rank") == 1))
            .sort(["feature", "cosine", "source_release", "source_sae_id"],
                  descending=[False, True, False, False])
            .unique("feature", keep="first", maintain_order=True)
            .select("feature", "source_release", "source_sae_id", "source_feature", "cosine"))


def carried_labels(best: pl.DataFrame, source_labels: pl.DataFrame, *, release: str, sae_id: str,
                   keep_fresh: set[int]) -> pl.DataFrame:
    """Label rows carrying each matched feature's source label over (`best` from best_sources;
    `source_labels`: the sources' current fresh labels, SOURCE_LABEL_COLUMNS). Features in
    `keep_fresh` already have a label of their own and are left alone. The row keeps the source's
    label, scores and labelled_at (when the text was made), names its provenance, and is
    `carried:<source run>` so a rerun writes the same rows."""
    sources = source_labels.select(SOURCE_LABEL_COLUMNS).rename({
        "release": "source_release", "sae_id": "source_sae_id", "feature": "source_feature",
        "run_id": "source_run_id"})
    rows = (best.filter(~pl.col("feature").is_in(sorted(keep_fresh)))
            .join(sources, on=["source_release", "source_sae_id", "source_feature"], how="inner"))
    return rows.select(
        pl.lit(release).alias("release"), pl.lit(sae_id).alias("sae_id"),
        pl.col("feature").cast(pl.Int32),
        (pl.lit(CARRIED_PREFIX) + pl.col("source_run_id")).alias("run_id"),
        "label", "top_labels", "recovered_token", "recovered_reliable", "scale", "composite",
        "score", "max_selfsim", "max_selfsim_repeat", "max_roundtrip", "failed",
        "failure_reason", pl.lit(False).alias("skipped"), "model_id", "model_revision", "preset",
        "settings_hash", pl.lit(0.0).alias("seconds"), "labelled_at",
        pl.col("source_release").alias("carried_from_release"),
        pl.col("source_sae_id").alias("carried_from_sae_id"),
        pl.col("source_feature").cast(pl.Int32).alias("carried_from_feature"),
        pl.col("cosine").alias("carried_cosine"),
    ).sort("feature")


# -- the decoders a warehouse has labelled, kept beside it ---------------------------------------
# A later SAE version is matched against the exact rows that were labelled, even when the old SAE's
# files are gone (the embedded default replaced in place, a registry SAE offline).

def decoder_dir(warehouse: str) -> Path | None:
    """Where a warehouse file keeps the decoders it has labelled; None for an in-memory one."""
    from selfexplain.warehouse import MEMORY

    return None if warehouse == MEMORY else Path(f"{warehouse}.decoders")


def decoder_file(folder: Path, release: str, sae_id: str) -> Path:
    digest = hashlib.sha256(f"{release}\0{sae_id}".encode()).hexdigest()[:16]
    return Path(folder) / f"{digest}.safetensors"


def save_decoder(folder: Path, release: str, sae_id: str, decoder: Tensor) -> Path:
    """Unit decoder rows as fp16 (matching needs directions only), written atomically once."""
    from safetensors.torch import save_file

    path = decoder_file(folder, release, sae_id)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file({"unit_decoder": unit_rows(decoder).half().contiguous()}, str(partial),
              metadata={"release": release, "sae_id": sae_id})
    os.replace(partial, path)
    return path


def load_decoder(folder: Path, release: str, sae_id: str) -> Tensor | None:
    """The stored unit decoder (n, d) of this SAE, or None when none was stored."""
    from safetensors import safe_open

    path = decoder_file(folder, release, sae_id)
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        if (meta.get("release"), meta.get("sae_id")) != (release, sae_id):
            return None  # a hash collision or a foreign file: never match against it
        return handle.get_tensor("unit_decoder").float()


# -- do two labels say the same thing? -----------------------------------------------------------

AGREEMENT_SIMILARITY = 0.28
"""MiniLM cosine at or above which two labels count as the same explanation: the 95th percentile
of the similarity of labels of unrelated features (.279, docs/carryover.md)."""


def _norm(text: str | None) -> str:
    return " ".join((text or "").lower().strip(" \t\n\"'.,;:").split())


def label_similarity(first: Sequence[str | None], second: Sequence[str | None],
                     embed: Callable[[Sequence[str]], Tensor]) -> list[float | None]:
    """MiniLM cosine of each pair of labels (None when either is missing)."""
    pairs = [i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a and b]
    out: list[float | None] = [None] * len(first)
    if pairs:
        left = embed([first[i] for i in pairs])  # (n, e) unit rows
        right = embed([second[i] for i in pairs])
        for i, sim in zip(pairs, (left * right).sum(dim=1).tolist(), strict=True):
            out[i] = sim
    return out


def labels_agree(first: Sequence[str | None], second: Sequence[str | None],
                 first_tokens: Sequence[str | None], second_tokens: Sequence[str | None],
                 similarity: Sequence[float | None], *,
                 threshold: float = AGREEMENT_SIMILARITY) -> list[bool | None]:
    """Two labels agree when their text is the same (case, spacing, quotes aside), their recovered
    tokens are the same, or their embeddings are at least `threshold` similar; None when either
    label is missing."""
    out: list[bool | None] = []
    for a, b, ta, tb, sim in zip(first, second, first_tokens, second_tokens, similarity,
                                 strict=True):
        if not a or not b:
            out.append(None)
            continue
        same_token = bool(_norm(ta)) and _norm(ta) == _norm(tb)
        out.append(_norm(a) == _norm(b) or same_token or (sim is not None and sim >= threshold))
    return out
