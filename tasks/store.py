"""The single writer: every row reaches the warehouse (or a Parquet shard folder) through here.

Each write opens the warehouse, upserts in one transaction and closes it again, so the file lock
is held for moments only and readers get in between. A busy file is retried (transient)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from selfexplain.leases import TOUCH_SECONDS, kept_touched
from selfexplain.runlock import write_locked
from selfexplain.warehouse import Warehouse
from tasks.retry import retry_transient

_WRITER = threading.Lock()
"""One writer per process, even when shards finish on several threads."""

TABLE_ORDER = ["sae", "run", "label", "label_current", "explanation", "scale_metric",
               "shard_done"]
"""Upsert order inside one transaction; shard_done last (it marks the shard as stored)."""


def ordered(frames: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    rank = {t: i for i, t in enumerate(TABLE_ORDER)}
    return dict(sorted(frames.items(), key=lambda kv: rank.get(kv[0], len(rank))))


@task(name="write-rows", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 5, 15],
      retry_condition_fn=retry_transient)
def write_rows(warehouse: str, frames: dict[str, pl.DataFrame]) -> dict[str, int]:
    """Upsert frames (table -> rows) in one transaction; returns rows written per table."""
    with _WRITER:
        return write_locked(warehouse, ordered(frames))


@task(name="stored-features", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 5, 15],
      retry_condition_fn=retry_transient)
def stored_features(warehouse: str, request_hash: str, out_dir: str | None = None) -> list[int]:
    """Features already stored for this request: in the warehouse, and in Parquet shards."""
    done: set[int] = set()
    if warehouse == ":memory:" or Path(warehouse).is_file() or out_dir is None:
        with _WRITER, Warehouse(warehouse, wait_s=10) as wh:
            rows = wh.query("SELECT features FROM shard_done WHERE request_hash = ?",
                            [request_hash])
        done.update(f for features in rows["features"].to_list() for f in features)
    if out_dir is not None:
        for path in Path(out_dir, request_hash).glob("shard-*/shard_done.parquet"):
            for features in pl.read_parquet(path)["features"].to_list():
                done.update(features)
    return sorted(done)


@task(name="mark-interrupted", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 5, 15],
      retry_condition_fn=retry_transient)
def mark_interrupted(warehouse: str, request_hash: str, run_id: str) -> None:
    """Earlier runs of this request still marked `running` were killed: say so."""
    with _WRITER, Warehouse(warehouse, wait_s=10) as wh:
        wh.execute("UPDATE run SET status = 'interrupted' WHERE request_hash = ? "
                   "AND status = 'running' AND run_id <> ?", [request_hash, run_id])


@task(name="publish-snapshot", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 5, 15],
      retry_condition_fn=retry_transient)
def publish_snapshot(warehouse: str) -> str | None:
    """Copy the warehouse to `<file>.snapshot` so readers can query while a later run writes."""
    with _WRITER, Warehouse(warehouse, wait_s=10) as wh:
        path = wh.publish_snapshot()
    return None if path is None else str(path)


def write_parquet_folder(folder: Path, frames: dict[str, pl.DataFrame]) -> Path:
    """Write `<table>.parquet` files into `folder`, atomically (a temporary folder, then rename)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    for table, rows in frames.items():
        rows.write_parquet(partial / f"{table}.parquet")
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)
    return folder


@task(name="write-parquet", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5,
      retry_condition_fn=retry_transient)
def write_parquet(out_dir: str, request_hash: str, name: str,
                  frames: dict[str, pl.DataFrame]) -> str:
    """Scale-out mode: a shard (or a run row) as Parquet under `<out_dir>/<request_hash>/<name>/`."""
    return str(write_parquet_folder(Path(out_dir, request_hash, name), frames))


def read_parquet_folder(folder: Path) -> dict[str, pl.DataFrame]:
    return ordered({p.stem: pl.read_parquet(p) for p in sorted(folder.glob("*.parquet"))})


@task(name="merge-parquet", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 5, 15],
      retry_condition_fn=retry_transient)
def merge_folder(warehouse: str, folder: str) -> dict[str, int]:
    """Upsert one Parquet folder (a shard or a run row) in one transaction."""
    frames = read_parquet_folder(Path(folder))
    with _WRITER:
        return write_locked(warehouse, frames)


@task(name="read-labels", cache_policy=NO_CACHE, persist_result=False, retries=3,
      retry_delay_seconds=[2, 5, 15], retry_condition_fn=retry_transient)
def read_labels(warehouse: str, release: str, sae_id: str, features: list[int],
                plot_features: int = 4) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Current labels of `features` (v_feature_labels) and the sweeps of the first few."""
    with _WRITER, Warehouse(warehouse, wait_s=10) as wh:
        labels = wh.query(
            "SELECT * FROM v_feature_labels WHERE release = ? AND sae_id = ? "
            "AND feature IN (SELECT unnest(?::INTEGER[])) ORDER BY feature",
            [release, sae_id, features])
        shown = labels.filter(~pl.col("skipped"))["feature"].head(plot_features).to_list()
        sweeps = wh.query(
            "SELECT * FROM v_scale_sweep WHERE release = ? AND sae_id = ? AND is_current "
            "AND feature IN (SELECT unnest(?::INTEGER[])) ORDER BY feature, prompt, scale",
            [release, sae_id, shown])
    return labels, sweeps


def layer_threshold(warehouse: str, *, model_id: str, model_revision: str, layer: int,
                    null_hash: str) -> float | None:
    """The newest failure threshold `evaluate --null N --warehouse W` stored for this model,
    layer and engine settings (meaning prompt), or None."""
    if warehouse == ":memory:" or not Path(warehouse).is_file():
        return None
    with _WRITER, Warehouse(warehouse, wait_s=10) as wh:
        rows = wh.query(
            "SELECT threshold FROM layer_threshold WHERE model_id = ? AND model_revision = ? "
            "AND layer = ? AND settings_hash = ? AND prompt = 'meaning' "
            "ORDER BY computed_at DESC LIMIT 1",
            [model_id, model_revision, layer, null_hash])
    return None if rows.height == 0 else float(rows["threshold"][0])


HEARTBEAT_SECONDS = TOUCH_SECONDS
"""How often a scale-out shard run touches its heartbeat file."""


def heartbeat_path(out_dir: str | Path, flow_run_id: str) -> Path:
    return Path(out_dir) / ".heartbeats" / str(flow_run_id)


def heartbeat(out_dir: str | Path, flow_run_id: str, every_s: float = HEARTBEAT_SECONDS):
    """Touch `<out_dir>/.heartbeats/<flow run id>` every few seconds while the block runs, so the
    scale-out parent (on any machine sharing out_dir) can tell a worker that died from a slow
    one. A thread; stopped and joined in `finally`."""
    return kept_touched(heartbeat_path(out_dir, flow_run_id), every_s)
