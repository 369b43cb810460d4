"""Explain one shard of features: load the model and SAE once (per process), run the engine,
return the shard's rows as small polars frames (no tensors leave this task)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from selfexplain.warehouse_rows import feature_rows, frame, utc_now
from tasks.request import RelabelRequest, SaeInfo, shard_key
from tasks.retry import retry_transient
from tasks.cache import cached_explainer, cached_sae, request_model


@dataclass(frozen=True)
class ShardRows:
    """Everything one shard adds to the warehouse, keyed by table, plus its summary."""

    key: str
    features: list[int]
    frames: dict[str, pl.DataFrame]
    n_labelled: int
    n_failed: int
    n_skipped: int
    seconds: float
    model_id: str
    model_revision: str


def prepare_engine(request: RelabelRequest) -> None:
    """Load the model and SAE and build the engine (all cached for this process's shards), so that
    a model that cannot load, an SAE that does not fit it, a layer beyond it or a placeholder that
    is not one token fail before a run writes anything."""
    lm = request_model(request)
    cached_sae(request.sae).check_fits(lm.d_model, lm.n_layers)
    cached_explainer(request.model, request.device, request.config())


def resolve_layer_threshold(request: RelabelRequest, sae: SaeInfo) -> RelabelRequest:
    """With `layer_threshold`, the request with the stored null threshold of this model, SAE
    layer and settings as its failure threshold; a clear error when none was drawn yet."""
    from selfexplain.errors import InputError
    from tasks.store import layer_threshold

    if not request.layer_threshold:
        return request
    config = request.config()
    lm = request_model(request)
    layer = sae.resid_layer if sae.resid_layer is not None else config.injection_layer
    value = layer_threshold(request.warehouse, model_id=lm.model_id,
                            model_revision=lm.revision, layer=layer, null_hash=config.null_hash())
    if value is None:
        raise InputError(
            f"no failure threshold stored for {lm.model_id} at layer {layer} with these settings "
            f"in {request.warehouse}: run `selfexplain evaluate --suite real --sae {request.sae} "
            f"--null 100 --warehouse {request.warehouse}` with the same preset and engine flags "
            "first, or drop --layer-threshold")
    return request.with_threshold(value)


@task(name="prepare-engine", cache_policy=NO_CACHE, persist_result=False)
def prepare_engine_task(request: RelabelRequest) -> None:
    """Check that model, SAE and settings fit together before anything is written."""
    prepare_engine(request)


def explain_features(request: RelabelRequest, sae: SaeInfo, features: list[int], *, run_id: str,
                     request_hash: str, log=None) -> ShardRows:
    """The shard's work as a plain function (the task below only adds retries and logging)."""
    from selfexplain.explain import explain_sae_features

    began = time.perf_counter()
    config = request.config()
    lm = request_model(request)
    directions = cached_sae(request.sae)
    explainer = cached_explainer(request.model, request.device, config)
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        if log is not None:
            log(f"shard {features[0]}-{features[-1]}: {done}/{len(features)} features "
                f"({time.perf_counter() - began:.0f} s)")

    results, skipped = explain_sae_features(lm, directions, features, config, progress=progress,
                                            explainer=explainer)
    seconds = time.perf_counter() - began
    now = utc_now()
    frames = feature_rows(results, skipped, release=sae.release, sae_id=sae.sae_id,
                          run_id=run_id, model_id=lm.model_id, model_revision=lm.revision,
                          preset=config.preset, settings_hash=config.settings_hash(),
                          labelled_at=now)
    key = shard_key(features)
    n_failed = sum(r.failed for r in results)
    frames["shard_done"] = frame("shard_done", [dict(
        request_hash=request_hash, shard_key=key, run_id=run_id, release=sae.release,
        sae_id=sae.sae_id, features=features, n_features=len(features),
        n_labelled=len(results), n_failed=n_failed, n_skipped=len(skipped), seconds=seconds,
        done_at=now,
    )])
    return ShardRows(key=key, features=features, frames=frames, n_labelled=len(results),
                     n_failed=n_failed, n_skipped=len(skipped), seconds=seconds,
                     model_id=lm.model_id, model_revision=lm.revision)


@task(name="explain-shard", task_run_name="explain-{key}", cache_policy=NO_CACHE,
      persist_result=False, retries=1, retry_delay_seconds=10, retry_condition_fn=retry_transient)
def explain_shard(request: RelabelRequest, sae: SaeInfo, features: list[int], key: str,
                  run_id: str, request_hash: str) -> ShardRows:
    """Explain `features` (one shard); `key` names the task run in the UI."""
    logger = get_run_logger()
    return explain_features(request, sae, features, run_id=run_id, request_hash=request_hash,
                            log=logger.info)
