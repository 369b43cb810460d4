"""Carry labels over from earlier versions of an SAE: match decoders, store matches and labels.

The sources of a new SAE are the SAEs the warehouse has labelled for the same model and hook (and
residual width). Their decoders come from the copy the warehouse keeps beside itself
(`<warehouse>.decoders/`, written by every relabel), else from their files. Ids and counts cross
the task boundary, never tensors.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from selfexplain.carryover import (
    SOURCE_LABEL_COLUMNS,
    best_sources,
    carried_labels,
    decoder_dir,
    load_decoder,
    match_features,
    save_decoder,
)
from selfexplain.errors import SelfExplainError
from selfexplain.saes import DEFAULT_SAE
from selfexplain.runlock import writer_lock
from selfexplain.warehouse import Warehouse
from selfexplain.warehouse_rows import conform, utc_now
from tasks.request import SaeInfo
from tasks.retry import retry_transient
from tasks.cache import cached_sae
from tasks.store import _WRITER


class SourceMatch(BaseModel):
    """What matching against one source SAE found."""

    model_config = ConfigDict(frozen=True)

    release: str
    sae_id: str
    d_sae: int
    matched: int
    new: int
    vanished: int


class CarryOver(BaseModel):
    """The outcome of carrying labels over to one SAE."""

    model_config = ConfigDict(frozen=True)

    sources: list[SourceMatch]
    matched: list[int]
    """Features matched in some source (whether or not a label could be carried)."""
    carried: list[int]
    """Features whose current label is now a carried one."""
    skipped_sources: list[str]
    """Sources whose decoder could not be found, with the reason."""


@task(name="store-decoder", cache_policy=NO_CACHE, persist_result=False)
def store_decoder(warehouse: str, sae: SaeInfo) -> str | None:
    """Keep the labelled SAE's unit decoder beside the warehouse, for later versions to match."""
    folder = decoder_dir(warehouse)
    if folder is None:
        return None
    try:
        return str(save_decoder(folder, sae.release, sae.sae_id, cached_sae(sae.spec).decoder))
    except OSError as err:  # carry-over is an optimisation: never fail a relabel over it
        get_run_logger().warning(f"cannot keep the decoder in {folder}: {err.strerror or err}; "
                                 "later SAE versions are matched from the SAE files")
        return None


def source_spec(row: dict) -> str | None:
    """The spec a source SAE can be loaded by, from its `sae` row."""
    if row["source"] in ("local", "file"):
        return row["path"]
    if row["source"] == "registry":
        return f"{row['release']}/{row['sae_id']}"
    if row["source"] == DEFAULT_SAE:
        return DEFAULT_SAE
    return None


def source_decoder(row: dict, folder: Path | None):
    """The source's decoder (n, d): the stored copy, else its files when they still hold the same
    SAE; raises SelfExplainError saying why not."""
    if folder is not None:
        stored = load_decoder(folder, row["release"], row["sae_id"])
        if stored is not None:
            return stored
    spec = source_spec(row)
    if spec is None:
        raise SelfExplainError("no stored decoder and no path to load it from")
    loaded = cached_sae(spec)
    if (loaded.release, loaded.sae_id, loaded.d_sae) != (row["release"], row["sae_id"], row["d_sae"]):
        raise SelfExplainError(f"{spec} now holds {loaded.release}/{loaded.sae_id}, not this SAE")
    return loaded.decoder


SOURCES_SQL = """
SELECT s.release, s.sae_id, s.source, s.path, s.d_sae
FROM sae AS s
WHERE NOT (s.release = ? AND s.sae_id = ?)
  AND s.hook_name IS NOT DISTINCT FROM ?
  AND s.d_model = ?
  AND (s.model_id IS NULL OR ? IS NULL OR s.model_id = ?)
  AND EXISTS (SELECT 1 FROM label_current AS c JOIN label AS l
                ON l.release = c.release AND l.sae_id = c.sae_id AND l.feature = c.feature
               AND l.run_id = c.run_id
              WHERE c.release = s.release AND c.sae_id = s.sae_id
                AND l.carried_from_sae_id IS NULL AND NOT l.skipped)
ORDER BY s.release, s.sae_id
"""

FRESH_LABELS_SQL = """
SELECT l.* FROM label_current AS c JOIN label AS l
  ON l.release = c.release AND l.sae_id = c.sae_id AND l.feature = c.feature AND l.run_id = c.run_id
WHERE c.release = ? AND c.sae_id = ? AND l.carried_from_sae_id IS NULL AND NOT l.skipped
"""


@task(name="carry-over", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=retry_transient)
def carry_over_labels(warehouse: str, sae: SaeInfo, threshold: float, k: int = 3) -> CarryOver:
    """Match `sae` against every labelled SAE of its model and hook, store the matches
    (`feature_match`) and carry each matched feature's best source label over as a provisional
    label (`label`, `label_current`), unless the feature already has a fresh label."""
    log = get_run_logger()
    folder = decoder_dir(warehouse)
    new_decoder = cached_sae(sae.spec).decoder
    with _WRITER, Warehouse(warehouse, wait_s=10) as wh:
        sources = wh.query(SOURCES_SQL, [sae.release, sae.sae_id, sae.hook_name, sae.d_model,
                                         sae.model_id, sae.model_id])
        fresh = set(wh.query(FRESH_LABELS_SQL, [sae.release, sae.sae_id])["feature"].to_list())
    found: list[SourceMatch] = []
    skipped: list[str] = []
    frames: list[pl.DataFrame] = []
    now = utc_now()
    for row in sources.iter_rows(named=True):
        name = f"{row['release']}/{row['sae_id']}"
        try:
            old_decoder = source_decoder(row, folder)
        except Exception as err:  # a source that cannot be loaded only costs its labels
            skipped.append(f"{name}: {str(err).splitlines()[0][:160]}")
            log.warning(f"carry-over: source {name} skipped: {skipped[-1]}")
            continue
        matches = match_features(new_decoder, old_decoder, threshold=threshold, k=k)
        found.append(SourceMatch(release=row["release"], sae_id=row["sae_id"],
                                 d_sae=old_decoder.shape[0], **matches.summary()))
        frames.append(matches.table_rows(release=sae.release, sae_id=sae.sae_id,
                                         source_release=row["release"],
                                         source_sae_id=row["sae_id"], matched_at=now))
    if not frames:
        return CarryOver(sources=[], matched=[], carried=[], skipped_sources=skipped)
    match_rows = pl.concat(frames)
    best = best_sources(match_rows)
    with _WRITER, writer_lock(warehouse), Warehouse(warehouse, wait_s=10) as wh:
        source_labels = pl.concat([
            wh.query(FRESH_LABELS_SQL, [s.release, s.sae_id]).select(SOURCE_LABEL_COLUMNS)
            for s in found])
        labels = carried_labels(best, source_labels, release=sae.release, sae_id=sae.sae_id,
                                keep_fresh=fresh)
        wh.write({
            "feature_match": conform("feature_match", match_rows),
            "label": conform("label", labels),
            "label_current": labels.select("release", "sae_id", "feature", "run_id",
                                           "labelled_at"),
        })
    return CarryOver(sources=found, matched=sorted(best["feature"].to_list()),
                     carried=sorted(labels["feature"].to_list()), skipped_sources=skipped)


CHANGES_SQL = """
SELECT source_release, source_sae_id, status, count(*) AS n
FROM v_label_changes WHERE release = ? AND sae_id = ?
GROUP BY ALL ORDER BY source_release, source_sae_id, status
"""


@task(name="label-changes", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=retry_transient)
def label_changes(warehouse: str, release: str, sae_id: str) -> pl.DataFrame:
    """Matched features of this SAE by source and status (carried, same, changed, unlabelled)."""
    with _WRITER, Warehouse(warehouse, wait_s=10) as wh:
        return wh.query(CHANGES_SQL, [release, sae_id])


def carry_over_markdown(release: str, sae_id: str, carried: CarryOver,
                        changes: pl.DataFrame) -> str:
    """The diff of this SAE against its earlier versions, for the relabel run's artifact."""
    lines = [f"# {release}/{sae_id}: a new version of a labelled SAE", "",
             "| earlier SAE | its features | matched | new here | vanished |",
             "|---|---|---|---|---|"]
    for s in carried.sources:
        lines.append(f"| {s.release}/{s.sae_id} | {s.d_sae} | {s.matched} | {s.new} | "
                     f"{s.vanished} |")
    lines += ["", f"{len(carried.carried)} labels carried over (provisional in "
              "v_feature_labels); matched features relabelled afresh are compared below "
              "(`selfexplain diff` adds a semantic agreement).", "",
              "| earlier SAE | status | features |", "|---|---|---|"]
    for row in changes.iter_rows(named=True):
        lines.append(f"| {row['source_release']}/{row['source_sae_id']} | {row['status']} | "
                     f"{row['n']} |")
    for reason in carried.skipped_sources:
        lines.append(f"\nsource skipped: {reason}")
    return "\n".join(lines)
