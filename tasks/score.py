"""Score labels on held-out text (selfexplain.scoring) after they are written."""

from __future__ import annotations

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from selfexplain.warehouse_rows import utc_now
from tasks.cache import cached_sae


@task(name="score-labels", cache_policy=NO_CACHE, persist_result=False)
def score_labels(spec: str, release: str, sae_id: str, run_id: str, features: list[int],
                 labels: list[str | None]) -> pl.DataFrame | None:
    """`label_score` rows (embedding detection AUROC, random and hard negatives) for these
    labels of run `run_id`; None when the SAE has no held-out examples (`collect` makes them)."""
    from selfexplain.statstore import heldout_dir
    from tasks.cache import cached_scorer

    sae = cached_sae(spec)
    log = get_run_logger()
    if heldout_dir(sae) is None:
        log.info(f"no held-out examples for {release}/{sae_id}: labels left unscored "
                 "(`selfexplain collect` keeps them)")
        return None
    scores = cached_scorer(spec, str(sae.stats_dir)).score(features, labels)
    scored = scores.filter(pl.col("detection_auroc").is_not_null())
    if scored.height:
        log.info(f"held-out detection AUROC of {scored.height} labels: mean "
                 f"{scored['detection_auroc'].mean():.3f} (random negatives), "
                 f"{scored['detection_auroc_hard'].mean():.3f} (hard negatives)")
    return scores.select(
        pl.lit(release).alias("release"), pl.lit(sae_id).alias("sae_id"),
        pl.col("feature").cast(pl.Int32), pl.lit(run_id).alias("run_id"),
        pl.lit("embedding").alias("scorer"), "label", "detection_auroc", "detection_auroc_hard",
        pl.col("n_activating").cast(pl.Int32), pl.col("n_random").cast(pl.Int32),
        pl.col("n_hard").cast(pl.Int32), pl.lit(sae.stats_dir).alias("stats_dir"),
        pl.lit(utc_now()).alias("scored_at"))


UNSCORED_CARRIED_SQL = """
SELECT feature, run_id, label FROM v_feature_labels
WHERE release = ? AND sae_id = ? AND provisional AND detection_auroc IS NULL AND label IS NOT NULL
ORDER BY feature
"""


@task(name="score-carried", cache_policy=NO_CACHE, persist_result=False)
def score_carried(warehouse: str, spec: str, release: str, sae_id: str) -> int:
    """Score the labels carried over to this SAE on its own held-out examples (a carried label
    is a claim about the new SAE's latent: it is judged on where that latent fires)."""
    from tasks.store import _WRITER, write_rows
    from selfexplain.warehouse import Warehouse

    with _WRITER, Warehouse(warehouse, wait_s=10) as wh:
        carried = wh.query(UNSCORED_CARRIED_SQL, [release, sae_id])
    written = 0
    for (run_id,), group in carried.group_by(["run_id"], maintain_order=True):
        rows = score_labels.fn(spec, release, sae_id, str(run_id), group["feature"].to_list(),
                               group["label"].to_list())
        if rows is not None:
            written += write_rows(warehouse, {"label_score": rows})["label_score"]
    return written


@task(name="best-scored-current", cache_policy=NO_CACHE, persist_result=False)
def best_scored_current(warehouse: str, release: str, sae_id: str) -> int:
    """Make the best-scored label of each feature current where it has several scored labels
    (sql/updates/label_current_best_scored.sql); returns how many features changed label."""
    from selfexplain.runlock import writer_lock
    from selfexplain.warehouse import Warehouse
    from tasks.store import _WRITER

    with _WRITER, writer_lock(warehouse), Warehouse(warehouse, wait_s=10) as wh:
        before = wh.query("SELECT feature, run_id FROM label_current WHERE release = ? AND "
                          "sae_id = ?", [release, sae_id])
        wh.execute((wh.sql_dir / "updates" / "label_current_best_scored.sql").read_text(),
                   [release, sae_id])
        after = wh.query("SELECT feature, run_id FROM label_current WHERE release = ? AND "
                         "sae_id = ?", [release, sae_id])
    return before.join(after, on="feature", suffix="_after").filter(
        pl.col("run_id") != pl.col("run_id_after")).height
