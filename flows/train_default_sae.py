"""`train_default_sae`: check the request, build the corpus, train the SAE and write its feature
statistics (from the training run's own held-out activations), optionally store them.

Composition only; the work is in `tasks/train.py` and `selfexplain.train_sae`. With the defaults
it rebuilds the embedded default SAE (pass overwrite=True to replace it); see its CARD.md for the
exact settings used. `run_train_sae` is what `selfexplain train-sae` calls: the preflight first,
outside Prefect (a missing corpus or an occupied --out answers in seconds), then the flow.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect import flow

from tasks.store import write_rows
from tasks.train import (
    TrainSaeRequest,
    build_corpus_task,
    feature_stats_rows_task,
    preflight,
    preflight_task,
    train_sae_task,
)

__all__ = ["TrainSaeRequest", "run_train_sae", "train_default_sae"]


def run_train_sae(request: TrainSaeRequest, announce: Callable[[str], None] = print
                  ) -> dict[str, object]:
    """Check the request before Prefect starts, say when training resumes from a checkpoint,
    then run the flow."""
    resume = preflight(request)
    if resume is not None:
        announce(f"resuming from {request.checkpoint_dir}: {resume}")
    return train_default_sae(request)


@flow(name="train-default-sae", log_prints=True)
def train_default_sae(request: TrainSaeRequest | None = None) -> dict[str, object]:
    """Train one SAE (default: the embedded one). Returns its report (None when
    `stop_after_chunks` stopped it: `stopped_after_chunks` says so), the statistics path and the
    rows stored."""
    request = request or TrainSaeRequest()
    preflight_task(request)
    corpus = (build_corpus_task(request.corpus_dir) if request.build_corpus
              else request.corpus_dir)
    trained = train_sae_task(request.model, corpus, request.out_dir, request.train,
                             request.overwrite, request.checkpoint_dir,
                             request.stop_after_chunks, request.statistics)
    if trained is None:
        print(f"stopped after {request.stop_after_chunks} chunks; state saved in "
              f"{request.checkpoint_dir}")
        return {"report": None, "stats_path": None, "stored": {},
                "stopped_after_chunks": request.stop_after_chunks}
    stored: dict[str, int] = {}
    if request.warehouse is not None and trained.stats_path is not None:
        release, sae_id = request.names()
        rows = feature_stats_rows_task(request.out_dir, release, sae_id)
        stored = write_rows(request.warehouse, {"feature_stats": rows})
    report = trained.report
    print(f"SAE written to {request.out_dir}: variance explained "
          f"{report['variance_explained']:.3f}, L0 {report['l0']:.1f}, dead fraction "
          f"{report['dead_fraction']:.3f}; statistics {trained.stats_path}")
    return {"report": report, "stats_path": trained.stats_path, "stored": stored,
            "stopped_after_chunks": None}


if __name__ == "__main__":
    train_default_sae()
