"""Load and validate the SAE once; hand on its ids and shape, never its weights."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from selfexplain.saes import DEFAULT_SAE, SaeDirections, load_sae
from tasks.request import SaeInfo
from tasks.retry import retry_transient


@lru_cache(maxsize=2)
def cached_sae(spec: str) -> SaeDirections:
    """One load per process: the SAE task and every shard in this process share it."""
    return load_sae(spec)


def source_of(spec: str) -> tuple[str, str | None]:
    """(source, path) of an SAE spec: default, local folder, file, or registry id."""
    if spec == DEFAULT_SAE:
        return "default", None
    path = Path(spec).expanduser()
    if path.is_dir():
        return "local", str(path.resolve())
    if spec.endswith(".safetensors"):
        return "file", str(path.resolve())
    return "registry", None


def sae_info(spec: str) -> SaeInfo:
    sae = cached_sae(spec)
    source, path = source_of(spec)
    return SaeInfo(spec=spec, release=sae.release, sae_id=sae.sae_id, source=source,
                   d_sae=sae.d_sae, d_model=sae.d_model, hook_name=sae.hook_name,
                   resid_layer=sae.resid_layer, model_id=sae.model_id, path=path)


@task(name="load-sae", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5,
      retry_condition_fn=retry_transient)
def load_sae_info(spec: str) -> SaeInfo:
    """Load the SAE (validates its files) and return its ids and shape."""
    return sae_info(spec)



def stats_dir(spec: str) -> Path | None:
    """The folder that may ship `feature_stats.parquet` next to the SAE weights."""
    from selfexplain.saes import sae_folder

    return sae_folder(spec)


@task(name="sae-feature-stats", cache_policy=NO_CACHE, persist_result=False)
def sae_feature_stats(spec: str, release: str, sae_id: str, features: list[int]):
    """The activation statistics shipped with the SAE (if any) as `feature_stats` rows for
    `features`, so v_feature_labels can flag single-token features; None when there are none."""
    import polars as pl

    from selfexplain.stats import STATS_FILE, load_feature_stats, warehouse_rows

    folder = stats_dir(spec)
    if folder is None or not (folder / STATS_FILE).is_file():
        return None
    rows = warehouse_rows(load_feature_stats(folder), release=release, sae_id=sae_id)
    return rows.filter(pl.col("feature").is_in(features))
