"""`train_default_sae`: build the corpus, train the SAE, compute its feature statistics.

Composition only; the work is in `tasks/train.py` and `selfexplain.train_sae` / `feature_stats`. With the
defaults it rebuilds the embedded default SAE (pass overwrite=True to replace it); see its CARD.md
for the exact settings used.
"""

from __future__ import annotations

from prefect import flow

from tasks.store import write_rows
from tasks.train import (
    TrainSaeRequest,
    build_corpus_task,
    feature_stats_rows_task,
    feature_stats_task,
    train_sae_task,
)


@flow(name="train-default-sae", log_prints=True)
def train_default_sae(request: TrainSaeRequest | None = None) -> dict[str, object]:
    """Train one SAE (default: the embedded one) and return its report and statistics path."""
    request = request or TrainSaeRequest()
    corpus = build_corpus_task(request.corpus_dir)
    report = train_sae_task(request.model, corpus, request.out_dir, request.train,
                            request.overwrite, request.checkpoint_dir)
    stats_path = feature_stats_task(request.model, request.out_dir, corpus, request.stats_tokens)
    if request.warehouse is not None:
        release, sae_id = request.names()
        rows = feature_stats_rows_task(request.out_dir, release, sae_id)
        write_rows(request.warehouse, {"feature_stats": rows})
    print(f"SAE written to {request.out_dir}: variance explained "
          f"{report['variance_explained']:.3f}, L0 {report['l0']:.1f}, dead fraction "
          f"{report['dead_fraction']:.3f}; statistics {stats_path}")
    return {**report, "stats_path": stats_path}


if __name__ == "__main__":
    train_default_sae()
