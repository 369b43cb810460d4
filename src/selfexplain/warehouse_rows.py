"""Typed rows of every warehouse table, and the engine's results turned into them.

What a writer hands `Warehouse.write`: polars frames with each table's column types (`SCHEMAS`,
the mirror of `sql/tables`), built by `frame` from dicts or by `feature_rows` from the engine's
results. No DuckDB here: tasks build rows without opening the warehouse.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence

import polars as pl

from selfexplain.results import FeatureExplanation, SkippedFeature


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


LATEST_WINS: dict[str, tuple[str, ...]] = {"label_current": ("labelled_at", "run_id")}
"""Tables whose upsert keeps the newest row of a key (sql/upserts): a batch holding several rows
of one key is reduced to its newest by these columns, not to whichever came last."""

TS = pl.Datetime("us", "UTC")
SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "label": {
        "release": pl.String, "sae_id": pl.String, "feature": pl.Int32, "run_id": pl.String,
        "label": pl.String, "top_labels": pl.List(pl.String), "recovered_token": pl.String,
        "recovered_reliable": pl.Boolean, "scale": pl.Float64, "composite": pl.Float64,
        "score": pl.Float64, "max_selfsim": pl.Float64, "max_selfsim_repeat": pl.Float64,
        "max_roundtrip": pl.Float64, "failed": pl.Boolean, "failure_reason": pl.String, "skipped": pl.Boolean,
        "model_id": pl.String, "model_revision": pl.String, "preset": pl.String,
        "settings_hash": pl.String, "seconds": pl.Float64, "labelled_at": TS,
        "carried_from_release": pl.String, "carried_from_sae_id": pl.String,
        "carried_from_feature": pl.Int32, "carried_cosine": pl.Float64,
    },
    "label_score": {
        "release": pl.String, "sae_id": pl.String, "feature": pl.Int32, "run_id": pl.String,
        "scorer": pl.String, "label": pl.String, "detection_auroc": pl.Float64,
        "detection_auroc_hard": pl.Float64, "n_activating": pl.Int32, "n_random": pl.Int32,
        "n_hard": pl.Int32, "stats_dir": pl.String, "scored_at": TS,
    },
    "feature_match": {
        "release": pl.String, "sae_id": pl.String, "feature": pl.Int32,
        "source_release": pl.String, "source_sae_id": pl.String, "rank": pl.Int32,
        "source_feature": pl.Int32, "cosine": pl.Float64, "mutual": pl.Boolean,
        "matched": pl.Boolean, "threshold": pl.Float64, "matched_at": TS,
    },
    "label_current": {
        "release": pl.String, "sae_id": pl.String, "feature": pl.Int32, "run_id": pl.String,
        "labelled_at": TS,
    },
    "explanation": {
        "release": pl.String, "sae_id": pl.String, "feature": pl.Int32, "run_id": pl.String,
        "candidate": pl.Int32, "prompt": pl.String, "text": pl.String, "scale": pl.Float64,
        "sample": pl.Int32, "composite": pl.Float64, "score": pl.Float64, "rank": pl.Int32,
        "chosen": pl.Boolean, "extra_json": pl.String, "peak_token": pl.String,
    },
    "scale_metric": {
        "release": pl.String, "sae_id": pl.String, "feature": pl.Int32, "run_id": pl.String,
        "prompt": pl.String, "scale": pl.Float64, "selfsim": pl.Float64,
        "entropy": pl.Float64, "crossent": pl.Float64, "composite": pl.Float64,
    },
    "shard_done": {
        "request_hash": pl.String, "shard_key": pl.String, "run_id": pl.String,
        "release": pl.String, "sae_id": pl.String, "features": pl.List(pl.Int32),
        "n_features": pl.Int32, "n_labelled": pl.Int32, "n_failed": pl.Int32,
        "n_skipped": pl.Int32, "seconds": pl.Float64, "done_at": TS,
    },
    "run": {
        "run_id": pl.String, "request_hash": pl.String, "model": pl.String,
        "model_id": pl.String, "model_revision": pl.String, "release": pl.String,
        "sae_id": pl.String, "preset": pl.String, "settings_hash": pl.String,
        "config_json": pl.String, "features": pl.String, "n_features": pl.Int32,
        "shard_size": pl.Int32, "n_shards": pl.Int32, "n_shards_skipped": pl.Int32,
        "n_labelled": pl.Int32, "n_failed": pl.Int32, "n_skipped": pl.Int32,
        "status": pl.String, "error": pl.String, "started_at": TS, "finished_at": TS,
    },
    "sae": {
        "release": pl.String, "sae_id": pl.String, "source": pl.String, "model_id": pl.String,
        "hook_name": pl.String, "resid_layer": pl.Int32, "d_sae": pl.Int32,
        "d_model": pl.Int32, "path": pl.String, "neuronpedia_id": pl.String,
        "first_seen": TS, "last_seen": TS, "removed_at": TS,
    },
    "sae_change": {
        "release": pl.String, "sae_id": pl.String, "change": pl.String, "source": pl.String,
        "observed_at": TS, "matched": pl.Boolean,
    },
    "registry_snapshot": {
        "snapshot_sha": pl.String, "sae_lens_version": pl.String, "n_releases": pl.Int32,
        "n_saes": pl.Int32, "first_seen": TS, "last_seen": TS,
    },
    "registry_entry": {
        "snapshot_sha": pl.String, "release": pl.String, "sae_id": pl.String,
        "model_id": pl.String, "repo_id": pl.String, "path": pl.String,
        "neuronpedia_id": pl.String,
    },
    "reference_label": {
        "source": pl.String, "release": pl.String, "sae_id": pl.String, "feature": pl.Int32,
        "description": pl.String, "model_id": pl.String, "layer": pl.String,
        "explanation_model": pl.String, "source_file": pl.String, "imported_at": TS,
    },
}


def frame(table: str, rows: Iterable[Mapping[str, object]]) -> pl.DataFrame:
    """Rows (dicts) as a frame with the table's column types; missing columns are null."""
    schema = SCHEMAS[table]
    rows = [{name: row.get(name) for name in schema} for row in rows]
    return pl.DataFrame(rows, schema=schema, orient="row")


def conform(table: str, rows: pl.DataFrame) -> pl.DataFrame:
    """A frame with exactly the table's columns and types (columns it lacks are null)."""
    return rows.select([
        (pl.col(name) if name in rows.columns else pl.lit(None)).cast(dtype).alias(name)
        for name, dtype in SCHEMAS[table].items()])


def feature_rows(results: Sequence[FeatureExplanation], skipped: Sequence[SkippedFeature], *,
                 release: str, sae_id: str, run_id: str, model_id: str, model_revision: str,
                 preset: str, settings_hash: str,
                 labelled_at: dt.datetime | None = None) -> dict[str, pl.DataFrame]:
    """The engine's records as frames for `label`, `label_current`, `explanation`, `scale_metric`."""
    labelled_at = labelled_at or utc_now()
    keys = dict(release=release, sae_id=sae_id, run_id=run_id)
    common = dict(keys, model_id=model_id, model_revision=model_revision, preset=preset,
                  settings_hash=settings_hash, labelled_at=labelled_at)
    labels: list[dict[str, object]] = []
    explanations: list[dict[str, object]] = []
    metrics: list[dict[str, object]] = []
    for fe in results:
        best = fe.explanations[0] if fe.explanations else None
        labels.append(dict(
            common, feature=fe.feature, label=fe.label,
            top_labels=[c.text for c in fe.explanations],
            recovered_token=fe.recovered_token, recovered_reliable=fe.recovered_reliable,
            scale=best.scale if best else None, composite=best.composite if best else None,
            score=best.score if best else None, max_selfsim=fe.max_selfsim,
            max_selfsim_repeat=fe.max_selfsim_repeat, max_roundtrip=fe.max_roundtrip,
            failed=fe.failed,
            failure_reason=fe.failure_reason, skipped=False, seconds=fe.seconds,
        ))
        for i, c in enumerate(fe.candidates):
            explanations.append(dict(
                keys, feature=fe.feature, candidate=i, prompt=c.prompt, text=c.text,
                scale=c.scale, sample=c.sample, composite=c.composite, score=c.score,
                rank=c.rank, chosen=c.chosen,
                extra_json=json.dumps(c.extra, sort_keys=True) if c.extra else None,
                peak_token=c.peak_token,
            ))
        for sweep in fe.sweeps:
            for j, scale in enumerate(sweep.scales):
                metrics.append(dict(
                    keys, feature=fe.feature, prompt=sweep.prompt, scale=float(scale),
                    selfsim=_at(sweep.selfsim, j), entropy=_at(sweep.entropy, j),
                    crossent=_at(sweep.crossent, j), composite=_at(sweep.composite, j),
                ))
    for sk in skipped:
        labels.append(dict(common, feature=sk.feature, label=None, top_labels=[], failed=True,
                           failure_reason=sk.reason, skipped=True))
    current = [dict(keys, feature=row["feature"], labelled_at=labelled_at) for row in labels]
    return {
        "label": frame("label", labels),
        "label_current": frame("label_current", current),
        "explanation": frame("explanation", explanations),
        "scale_metric": frame("scale_metric", metrics),
    }


def _at(values: Sequence[float], index: int) -> float | None:
    return float(values[index]) if index < len(values) else None


# -- backup and restore ---------------------------------------------------------------------------
