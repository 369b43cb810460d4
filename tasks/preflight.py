"""The relabel flow's first task: check everything that can be checked before a row is written,
so that bad input ends in one line and leaves the warehouse as it was.

`preflight` is plain Python: `flows.relabel.run_relabel` (the CLI) calls it before Prefect
starts, so a wrong path or index answers in seconds; the flow then runs it again as its first
task, from this process's caches (SAE, model, engine)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.request import RelabelRequest, SaeInfo


class Checked(NamedTuple):
    """What the preflight established."""

    request: RelabelRequest
    """The request, its layer threshold resolved when it asked for one."""
    sae: SaeInfo
    """The SAE's ids and shape (before any statistics are collected for it)."""
    features: list[int]
    """The requested features, checked against the SAE's width."""


def preflight(request: RelabelRequest) -> Checked:
    """The SAE, the feature range, the warehouse file and, when features are left to label, the
    model and engine settings. What is loaded here is cached and reused by the flow."""
    from selfexplain.saes import check_features, peek_width
    from selfexplain.warehouse import Warehouse, check_duckdb_file
    from tasks.cache import cached_sae
    from tasks.explain import prepare_engine, resolve_layer_threshold
    from tasks.sae import sae_info
    from tasks.store import stored_features

    # What can be told from file headers first (no sae-lens import, no model): seconds.
    if request.out_dir is None:
        check_duckdb_file(request.warehouse)
    width = peek_width(request.sae)
    if width is not None and not request.all_features:
        check_features(request.feature_list(width), width)
    sae = sae_info(request.sae)
    features = request.feature_list(sae.d_sae)
    check_features(features, sae.d_sae)
    direction = request.config().direction
    if direction == "input":  # an SAE without typical inputs: say so now
        cached_sae(request.sae).unit_directions(features[:1], direction)
    if request.layer_threshold:  # none stored yet: say so before anything starts
        request = resolve_layer_threshold(request, sae)
    warehouse = None if request.out_dir is not None else Path(request.warehouse)
    stored: set[int] = set()
    if warehouse is not None and warehouse.exists():  # busy, foreign or damaged: say so now
        stored.update(stored_features.fn(str(warehouse),
                                         request.request_hash(sae.release, sae.sae_id,
                                                              request.injected(sae))))
    if set(features) - stored:  # a bad model, SAE or setting fails here
        prepare_engine(request)
    if warehouse is not None and not warehouse.exists():
        Warehouse(warehouse).close()  # a read-only folder or a full disk: say so now
    return Checked(request, sae, features)


@task(name="preflight", cache_policy=NO_CACHE, persist_result=False)
def preflight_task(request: RelabelRequest) -> Checked:
    """Check the request's SAE, features, warehouse, model and settings before anything runs."""
    return preflight(request)
