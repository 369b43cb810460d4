"""What one process keeps loaded between the task runs it serves: the model, the SAE and the
engine's per-run state. A worker that runs many shards pays each load once (`lru_cache`)."""

from __future__ import annotations

from functools import lru_cache

from selfexplain.config import ExplainConfig, torch_dtype
from selfexplain.models import LoadedModel, load_model
from selfexplain.saes import SaeDirections
from selfexplain.statstore import load_sae
from tasks.request import RelabelRequest


@lru_cache(maxsize=1)
def cached_model(spec: str, precision: str = "float32", device: str = "cpu") -> LoadedModel:
    """One model load per process, reused by every shard this process runs."""
    return load_model(spec, dtype=torch_dtype(precision), device=device)


def request_model(request: RelabelRequest) -> LoadedModel:
    """The request's model, in the precision its engine settings ask for, on its device."""
    return cached_model(request.model, request.config().precision, request.device)


@lru_cache(maxsize=1)
def cached_explainer(spec: str, device: str, config: ExplainConfig):
    """The engine's per-run state (prompt caches, baselines, scale grid) for this model+config."""
    from selfexplain.explain import SelfExplainer

    return SelfExplainer(cached_model(spec, config.precision, device), config)


@lru_cache(maxsize=2)
def cached_sae(spec: str) -> SaeDirections:
    """One load per process: the SAE task and every shard in this process share it."""
    return load_sae(spec)


@lru_cache(maxsize=2)
def cached_scorer(spec: str, stats_dir: str):
    """The held-out embedding scorer of an SAE's statistics folder (its examples and the
    embedding model: about a second to load), kept for every shard this process scores."""
    from selfexplain.scoring import scorer_for

    return scorer_for(stats_dir, cached_sae(spec).decoder)
