"""Small statistics for the evaluation tables: Wilson intervals, AUROC, per-method summaries.

Every summary row carries its count and a 95% interval, so two methods are never compared on a
bare percentage.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import polars as pl

Z95 = 1.959963984540054

SUMMARY_SCHEMA = {
    "suite": pl.String, "method": pl.String, "metric": pl.String, "value": pl.Float64,
    "n": pl.Int64, "ci_low": pl.Float64, "ci_high": pl.Float64, "split": pl.String,
    "settings": pl.String,
}
"""One row per (suite, method, metric): the shape of every summary this package returns."""


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside 0..{n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """P(score of a random positive > a random negative), ties counting one half (Mann-Whitney)."""
    if not positives or not negatives:
        return float("nan")
    pooled = sorted([(v, 1) for v in positives] + [(v, 0) for v in negatives])
    rank_sum = 0.0
    i = 0
    while i < len(pooled):  # average ranks over ties
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        mean_rank = (i + j) / 2 + 1
        rank_sum += mean_rank * sum(label for _, label in pooled[i : j + 1])
        i = j + 1
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auroc_interval(area: float, n_pos: int, n_neg: int, z: float = Z95) -> tuple[float, float]:
    """Hanley-McNeil (1982) normal interval for an AUROC, clipped to [0, 1]."""
    if not n_pos or not n_neg or math.isnan(area):
        return float("nan"), float("nan")
    q1 = area / (2 - area)
    q2 = 2 * area * area / (1 + area)
    var = (area * (1 - area) + (n_pos - 1) * (q1 - area * area)
           + (n_neg - 1) * (q2 - area * area)) / (n_pos * n_neg)
    half = z * math.sqrt(max(var, 0.0))
    return max(0.0, area - half), min(1.0, area + half)


def mean_interval(values: Sequence[float], z: float = Z95) -> tuple[float, float, float]:
    """(mean, low, high) with a normal interval on the mean; NaNs ignored."""
    clean = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not clean:
        return float("nan"), float("nan"), float("nan")
    mean = sum(clean) / len(clean)
    if len(clean) == 1:
        return mean, float("nan"), float("nan")
    var = sum((v - mean) ** 2 for v in clean) / (len(clean) - 1)
    half = z * math.sqrt(var / len(clean))
    return mean, mean - half, mean + half


def summary_row(suite: str, method: str, metric: str, value: float, n: int, low: float,
                high: float, split: str | None = None,
                settings: dict[str, object] | str | None = None) -> dict[str, object]:
    if isinstance(settings, dict):
        settings = json.dumps(settings, sort_keys=True, default=str)
    return dict(suite=suite, method=method, metric=metric, value=value, n=n, ci_low=low,
                ci_high=high, split=split, settings=settings)


def summary_frame(rows: Sequence[dict[str, object]]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=SUMMARY_SCHEMA, orient="row")


def summarise_binary(items: pl.DataFrame, metrics: Sequence[str], *, suite: str,
                     by: str = "method", split: str | None = None,
                     settings: dict[str, str] | None = None) -> pl.DataFrame:
    """Per `by` value and metric: proportion of true over non-null items, with a Wilson interval.

    `settings` maps a method to its settings string (e.g. the config's JSON).
    """
    out: list[dict[str, object]] = []
    for (method,), group in items.group_by([by], maintain_order=True):
        for metric in metrics:
            if metric not in group.columns:
                continue
            column = group[metric].drop_nulls()
            n = column.len()
            if n == 0:
                continue
            k = int(column.cast(pl.Int64).sum())
            low, high = wilson(k, n)
            out.append(summary_row(suite, str(method), metric, k / n, n, low, high, split,
                                   (settings or {}).get(str(method))))
    return summary_frame(out)


def summarise_mean(items: pl.DataFrame, metrics: Sequence[str], *, suite: str,
                   by: str = "method", split: str | None = None) -> pl.DataFrame:
    """Per `by` value and metric: mean of non-null values with a normal 95% interval."""
    out: list[dict[str, object]] = []
    for (method,), group in items.group_by([by], maintain_order=True):
        for metric in metrics:
            if metric not in group.columns:
                continue
            values = group[metric].drop_nulls().to_list()
            if not values:
                continue
            mean, low, high = mean_interval(values)
            out.append(summary_row(suite, str(method), metric, mean, len(values), low, high, split))
    return summary_frame(out)
