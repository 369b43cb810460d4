"""Calibrated failure detection: a null of the failure metric from random directions, per layer.

For each layer, seeded random unit directions go through the engine and the metric its failure flag
reads forms the null: the maximum self-similarity over the scale grid (metric pass only, both
prompts), or the best round trip of a meaning candidate (a full explanation run). The threshold is
the null's 95th percentile: a feature that reads no better than a random direction is flagged.
Two nulls:
- `isotropic`: Gaussian directions in the full residual space (layer-independent);
- `residual`: random combinations of centred residuals of reference words at `layer` (the SAE's
  layer), so the null lives where that layer's activations vary.
The flag is then judged against outcomes (e.g. planted `hit_top3`): precision = P(wrong | flagged),
recall = P(flagged | wrong), each with a Wilson interval, for the null threshold and the post's
fixed 0.01.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import polars as pl
import torch
from torch import Tensor

from selfexplain.evaluation.stats import auroc, auroc_interval, summary_frame, summary_row, wilson
from selfexplain.explain import SelfExplainer
from selfexplain.forward import prompt_pass
from selfexplain.metrics import self_similarity
from selfexplain.vectors import REFERENCE_WORDS, word_residuals

SUITE = "failure_flag"
POST_THRESHOLD = 0.01
NULL_KINDS = ("isotropic", "residual")

THRESHOLD_SCHEMA = {
    "model_id": pl.String, "model_revision": pl.String, "layer": pl.Int32,
    "settings_hash": pl.String, "prompt": pl.String, "threshold": pl.Float64,
    "quantile": pl.Float64, "n_null": pl.Int32, "null_mean": pl.Float64, "null_std": pl.Float64,
    "computed_at": pl.Datetime("us", "UTC"),
}
"""The warehouse's `layer_threshold` row."""


def null_directions(explainer: SelfExplainer, n: int, *, seed: int = 0, kind: str = "isotropic",
                    layer: int | None = None) -> Tensor:
    """`n` seeded random unit directions (n, d_model) of the given null kind."""
    generator = torch.Generator().manual_seed(seed)
    lm = explainer.lm
    if kind == "isotropic":
        raw = torch.randn(n, lm.d_model, generator=generator)
    elif kind == "residual":
        layer = explainer.injection_layer if layer is None else layer
        residuals = word_residuals(lm, list(REFERENCE_WORDS), layer)  # (words, d_model)
        centred = residuals - residuals.mean(dim=0, keepdim=True)
        raw = torch.randn(n, centred.shape[0], generator=generator) @ centred  # (n, d_model)
    else:
        raise ValueError(f"unknown null kind {kind!r}: choose one of {NULL_KINDS}")
    return raw / raw.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@torch.inference_mode()
def max_selfsim(explainer: SelfExplainer, directions: Tensor, kind: str) -> Tensor:
    """Maximum over the metric grid of self-similarity (n,), metric pass only (no sampling)."""
    state = explainer.states[kind]
    scales = explainer.scales
    out = []
    per_chunk = max(1, explainer.config.batch_rows // len(scales))
    for start in range(0, directions.shape[0], per_chunk):
        chunk = directions[start : start + per_chunk].float()
        vectors = (scales[None, :, None] * chunk[:, None, :]).reshape(-1, chunk.shape[1])
        probe = torch.cat([
            prompt_pass(explainer.lm, state.prompt, state.prefix, rows,
                        explainer.injection_layer, explainer.probe_layer).probe
            for rows in vectors.split(explainer.config.batch_rows)
        ]).view(chunk.shape[0], len(scales), -1)
        out.append(self_similarity(probe, state.probe_zero, chunk).max(dim=-1).values)
    return torch.cat(out)


NULL_FEATURE_BASE = 1 << 30
"""Feature ids of null directions (they seed the sampling), apart from any SAE's latents."""


def null_distribution(explainer: SelfExplainer, n: int = 200, *, seed: int = 0,
                      kind: str = "isotropic", layer: int | None = None) -> dict[str, Tensor]:
    """The failure metric of `n` null directions, per prompt: max self-similarity (meaning, and
    repeat if configured), or the best round trip of the meaning prompt's candidates."""
    directions = null_directions(explainer, n, seed=seed, kind=kind, layer=layer)
    if explainer.config.failure_metric == "roundtrip":
        ids = list(range(NULL_FEATURE_BASE + seed * n, NULL_FEATURE_BASE + (seed + 1) * n))
        results = explainer.explain(directions, ids)
        return {"meaning": torch.tensor([-1.0 if r.max_roundtrip is None else r.max_roundtrip
                                         for r in results])}
    return {prompt: max_selfsim(explainer, directions, prompt) for prompt in explainer.states}


def threshold_rows(explainer: SelfExplainer, null: dict[str, Tensor], *, layer: int,
                   quantile: float = 0.95) -> pl.DataFrame:
    """The null's `quantile` per prompt, as `layer_threshold` rows."""
    lm = explainer.lm
    now = dt.datetime.now(dt.timezone.utc)
    rows = []
    for prompt, values in null.items():
        values = values.double()
        rows.append(dict(
            model_id=lm.model_id, model_revision=lm.revision, layer=layer,
            settings_hash=explainer.config.null_hash(), prompt=prompt,
            threshold=float(torch.quantile(values, quantile)), quantile=quantile,
            n_null=int(values.numel()), null_mean=float(values.mean()),
            null_std=float(values.std()) if values.numel() > 1 else 0.0, computed_at=now,
        ))
    return pl.DataFrame(rows, schema=THRESHOLD_SCHEMA, orient="row")


def flag_quality(scores: Sequence[float], correct: Sequence[bool], threshold: float
                 ) -> dict[str, float | int]:
    """Precision and recall of `score < threshold` as a detector of wrong labels."""
    flagged = [m < threshold for m in scores]
    wrong = [not c for c in correct]
    tp = sum(f and w for f, w in zip(flagged, wrong))
    n_flagged, n_wrong = sum(flagged), sum(wrong)
    return dict(tp=tp, n_flagged=n_flagged, n_wrong=n_wrong, n=len(flagged),
                precision=tp / n_flagged if n_flagged else float("nan"),
                recall=tp / n_wrong if n_wrong else float("nan"))


def flag_summary(rows: pl.DataFrame, thresholds: dict[str, float], *, outcome: str = "hit_top3",
                 split: str | None = None, score: str = "max_selfsim") -> pl.DataFrame:
    """Per method and named threshold: flag rate, precision and recall with Wilson intervals.

    `rows` need `method`, the `score` column the flag reads (`max_selfsim` or `max_roundtrip`)
    and the boolean `outcome` column (True = label right).
    """
    out = []
    usable = rows.filter(pl.col(score).is_not_null() & pl.col(outcome).is_not_null())
    for (method,), group in usable.group_by(["method"], maintain_order=True):
        sims, good = group[score].to_list(), group[outcome].to_list()
        for name, threshold in thresholds.items():
            q = flag_quality(sims, good, threshold)
            for metric, k, n in (("flag_rate", q["n_flagged"], q["n"]),
                                 ("flag_precision", q["tp"], q["n_flagged"]),
                                 ("flag_recall", q["tp"], q["n_wrong"])):
                if n == 0:
                    out.append(summary_row(SUITE, str(method), f"{metric}@{name}", float("nan"),
                                           0, float("nan"), float("nan"), split,
                                           {"threshold": threshold, "outcome": outcome,
                                            "score": score}))
                    continue
                low, high = wilson(int(k), int(n))
                out.append(summary_row(SUITE, str(method), f"{metric}@{name}", k / n, int(n), low,
                                       high, split, {"threshold": threshold, "outcome": outcome,
                                                     "score": score}))
    return summary_frame(out)


def engine_flag_summary(rows: pl.DataFrame, *, outcome: str = "hit_top3",
                        split: str | None = None, suite: str = SUITE) -> pl.DataFrame:
    """Precision and recall of the engine's own `failed` flag (whatever its metric), per method.

    Metrics `flag_rate@engine`, `flag_precision@engine` (P(wrong | flagged)) and
    `flag_recall@engine` (P(flagged | wrong)), with Wilson intervals.
    """
    out = []
    usable = rows.filter(pl.col("failed").is_not_null() & pl.col(outcome).is_not_null())
    for (method,), group in usable.group_by(["method"], maintain_order=True):
        flagged, good = group["failed"].to_list(), group[outcome].to_list()
        tp = sum(f and not g for f, g in zip(flagged, good))
        n_wrong = sum(not g for g in good)
        for metric, k, n in (("flag_rate", sum(flagged), len(flagged)),
                             ("flag_precision", tp, sum(flagged)), ("flag_recall", tp, n_wrong)):
            low, high = wilson(int(k), int(n)) if n else (float("nan"), float("nan"))
            out.append(summary_row(suite, str(method), f"{metric}@engine",
                                   k / n if n else float("nan"), int(n), low, high, split,
                                   {"outcome": outcome}))
    return summary_frame(out)


def selfsim_aurocs(rows: pl.DataFrame, null: Sequence[float], *, method: str,
                   outcome: str = "hit_top3", split: str | None = None,
                   suite: str = SUITE, score: str = "max_selfsim") -> pl.DataFrame:
    """How informative the failure score is (`max_selfsim` or `max_roundtrip`), as two AUROCs
    with Hanley-McNeil intervals: `auroc_vs_null` (items vs random directions) and
    `auroc_outcome` (right vs wrong items)."""
    part = rows.filter((pl.col("method") == method) & pl.col(score).is_not_null())
    sims = part[score].to_list()
    out = []
    if sims and len(null):
        area = auroc(sims, list(null))
        out.append(summary_row(suite, method, "auroc_vs_null", area, len(sims),
                               *auroc_interval(area, len(sims), len(null)), split,
                               {"n_null": len(null)}))
    good = part.filter(pl.col(outcome) == True)[score].to_list()  # noqa: E712
    bad = part.filter(pl.col(outcome) == False)[score].to_list()  # noqa: E712
    if good and bad:
        area = auroc(good, bad)
        out.append(summary_row(suite, method, f"auroc_{outcome}", area, len(good) + len(bad),
                               *auroc_interval(area, len(good), len(bad)), split,
                               {"n_right": len(good), "n_wrong": len(bad)}))
    return summary_frame(out)
