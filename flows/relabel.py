"""`relabel`: label the features of one SAE with one model, shard by shard, into the warehouse.

The flow only composes: load the SAE (ids out), find the shards already stored for this request,
explain the rest one shard per task, hand each shard's rows to the single writer, then publish a
snapshot and the monitoring artifacts. A rerun of the same request skips stored shards; a run
killed midway resumes where it stopped (its unfinished shard is redone).
"""

from __future__ import annotations

import time
import uuid

import polars as pl
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from selfexplain.errors import SelfExplainError
from selfexplain.runlock import writer_lock
from selfexplain.saes import check_features
from selfexplain.warehouse import frame, utc_now
from tasks.carryover import (
    carry_over_labels,
    carry_over_markdown,
    label_changes,
    store_decoder,
)
from tasks.artifacts import artifact_key, publish_artifacts, start_progress, update_progress
from tasks.explain import ShardRows, explain_shard, prepare_engine_task, resolve_layer_threshold
from tasks.request import RelabelRequest, SaeInfo, shard_key, split_shards
from tasks.sae import collect_stats, load_sae_info, sae_feature_stats
from tasks.score import best_scored_current, score_carried, score_labels
from tasks.store import (
    heartbeat,
    mark_interrupted,
    publish_snapshot,
    read_labels,
    stored_features,
    write_parquet,
    write_rows,
)


def labels_query(release: str, sae_id: str) -> str:
    """A ready-to-paste query for the user (printed, never executed with these literals)."""
    quote = lambda s: "'" + s.replace("'", "''") + "'"  # noqa: E731
    return ("SELECT feature, label, recovered_token, scale, max_roundtrip, failed "
            f"FROM v_feature_labels WHERE release = {quote(release)} "
            f"AND sae_id = {quote(sae_id)} ORDER BY feature")


def sae_frame(sae: SaeInfo) -> pl.DataFrame:
    now = utc_now()
    return frame("sae", [dict(release=sae.release, sae_id=sae.sae_id, source=sae.source,
                              model_id=sae.model_id, hook_name=sae.hook_name,
                              resid_layer=sae.resid_layer, d_sae=sae.d_sae, d_model=sae.d_model,
                              path=sae.path, first_seen=now, last_seen=now)])


def run_frame(request: RelabelRequest, sae: SaeInfo, run_id: str, request_hash: str,
              n_features: int, started_at, **facts: object) -> pl.DataFrame:
    config = request.config()
    return frame("run", [dict(
        run_id=run_id, request_hash=request_hash, model=request.model, release=sae.release,
        sae_id=sae.sae_id, preset=config.preset, settings_hash=config.settings_hash(),
        config_json=config.model_dump_json(),
        features="all" if request.all_features else request.features, n_features=n_features,
        shard_size=request.shard_size, started_at=started_at, **facts,
    )])


@flow(name="relabel", log_prints=True)
def relabel(request: RelabelRequest) -> dict[str, object]:
    """Relabel the requested features of one SAE; returns a summary of the run.

    One run per warehouse at a time: a second gets WarehouseInUse naming the first's PID."""
    if request.out_dir is not None:  # a scale-out shard: tell the parent this run is alive
        with heartbeat(request.out_dir, flow_run.id or "local"):
            return _relabel(request)
    with writer_lock(request.warehouse):
        return _relabel(request)


def with_statistics(request: RelabelRequest, sae: SaeInfo) -> SaeInfo:
    """The SAE with typical inputs: collected first (a task) when the preset injects them and
    none exist yet, unless `request.collect` is off. Injecting decoder rows instead is said in
    one line, never silently."""
    if request.config().direction == "decoder" or sae.typical_inputs is not None:
        return sae
    reason = "--no-collect"
    if request.collect:
        print(f"no statistics for {sae.release}/{sae.sae_id} yet: collecting them over corpus "
              f"{request.corpus!r} first ({request.collect_tokens:,} tokens; `selfexplain "
              "collect` does the same alone)")
        try:
            collect_stats(request.sae, request.model, request.corpus, request.collect_tokens,
                          request.device)
            sae = load_sae_info(request.sae)
        except SelfExplainError as err:  # e.g. a bare W_dec file: no encoder to collect with
            reason = f"collect failed: {err}"
    if sae.typical_inputs is None:
        print(f"injecting decoder rows for {sae.release}/{sae.sae_id} ({reason}): it has no "
              "typical inputs, so expect weaker labels (on the default SAE, token recovery "
              "about half) and no fires_on")
    return sae


def _relabel(request: RelabelRequest) -> dict[str, object]:
    log = get_run_logger()
    run_id = flow_run.id or str(uuid.uuid4())
    started_at, began = utc_now(), time.perf_counter()
    sae = with_statistics(request, load_sae_info(request.sae))
    features = request.feature_list(sae.d_sae)
    check_features(features, sae.d_sae)
    if request.layer_threshold:
        request = resolve_layer_threshold(request, sae)
        print(f"failure threshold {request.config().failure_threshold:g} "
              f"({request.config().failure_metric}): the null drawn for this model and layer")
    request_hash = request.request_hash(sae.release, sae.sae_id, request.injected(sae))
    parquet = request.out_dir is not None

    def record(frames: dict[str, pl.DataFrame], name: str) -> None:
        if parquet:
            write_parquet(request.out_dir, request_hash, name, frames)
        else:
            write_rows(request.warehouse, frames)

    def run_row(**facts: object) -> dict[str, pl.DataFrame]:
        return {"sae": sae_frame(sae), "run": run_frame(request, sae, run_id, request_hash,
                                                        len(features), started_at, **facts)}

    carried = None
    if request.carry_over:
        carried = carry_over_labels(request.warehouse, sae, request.match_threshold)
        matched = set(carried.matched)
        unmatched_first = [f for f in features if f not in matched]
        later = [f for f in features if f in matched]
        print(f"carry-over: {len(later)} of {len(features)} requested features match a labelled "
              f"SAE ({len(carried.carried)} labels carried over, provisional); "
              + ("they are skipped" if request.matched == "skip"
                 else "they are relabelled after the unmatched ones"))
        features_to_run = unmatched_first + ([] if request.matched == "skip" else later)
        if carried.carried and request.score:
            n = score_carried(request.warehouse, request.sae, sae.release, sae.sae_id)
            print(f"carry-over: {n} carried labels scored on this SAE's held-out examples")
            best_scored_current(request.warehouse, sae.release, sae.sae_id)
    else:
        features_to_run = features
    done = set(stored_features(request.warehouse, request_hash, request.out_dir))
    todo = [f for f in features_to_run if f not in done]
    shards = split_shards(todo, request.shard_size)
    n_shards_skipped = len(split_shards([f for f in features_to_run if f in done],
                                        request.shard_size))
    print(f"relabel {sae.release}/{sae.sae_id}: {len(features)} features, {len(shards)} shards "
          f"to run, {len(features_to_run) - len(todo)} features already stored for request "
          f"{request_hash}")
    if shards:  # a bad model, SAE or setting fails here, before any row is written
        prepare_engine_task(request)
    if not parquet:  # this run holds the lock: an earlier one still `running` was killed
        mark_interrupted(request.warehouse, request_hash, run_id)
        store_decoder(request.warehouse, sae)  # later versions are matched against this decoder
    if not shards:
        print(f"nothing to do: all {len(features_to_run)} features to run are stored for request "
              f"{request_hash}; change the settings or the seed to label them again"
              if features_to_run else "nothing to do: every requested feature carries a label "
              "over; pass --matched relabel to label them afresh")
    else:
        record(run_row(status="running", n_shards=len(shards), n_shards_skipped=n_shards_skipped),
               f"run-{run_id}")
        stats = sae_feature_stats(request.sae, sae.release, sae.sae_id, todo)
        if stats is not None:  # shipped or collected: fires_on and single-token flags
            record({"feature_stats": stats}, f"stats-{run_id}")

    progress = start_progress(artifact_key("relabel", sae.release, sae.sae_id), len(shards))
    totals = dict(n_labelled=0, n_failed=0, n_skipped=0)
    model_ids: dict[str, str] = {}
    collected: list[ShardRows] = []
    labelled: list[tuple[int, str | None]] = []
    finished = 0
    try:
        for part in shards:  # one after another: a process holds one model; scale out for more
            rows = explain_shard(request, sae, part, shard_key(part), run_id, request_hash)
            record(rows.frames, f"shard-{rows.key}")
            finished += 1
            for name in totals:
                totals[name] += getattr(rows, name)
            model_ids = {"model_id": rows.model_id, "model_revision": rows.model_revision}
            if parquet:
                collected.append(rows)
            fresh = rows.frames["label"].filter(~pl.col("skipped"))
            labelled.extend(zip(fresh["feature"].to_list(), fresh["label"].to_list()))
            update_progress(progress, finished, len(shards))
            print(f"shard {finished}/{len(shards)} (features {rows.features[0]}-"
                  f"{rows.features[-1]}): {rows.n_labelled} labelled, {rows.n_failed} failed, "
                  f"{rows.n_skipped} skipped in {rows.seconds:.1f} s")
    except BaseException as err:
        message = f"{type(err).__name__}: {err}".splitlines()[0][:500]
        try:
            record(run_row(status="failed", error=message, finished_at=utc_now(), **model_ids),
                   f"run-{run_id}")
        except Exception as inner:  # the writer may be the thing that failed
            log.warning(f"could not record the failure of run {run_id}: {inner}")
        raise

    mean_auroc = None
    if labelled and request.score:  # held-out detection scores of the new labels
        try:
            scores = score_labels(request.sae, sae.release, sae.sae_id, run_id,
                                  [f for f, _ in labelled], [t for _, t in labelled])
            if scores is not None:
                record({"label_score": scores}, f"scores-{run_id}")
                mean_auroc = scores["detection_auroc"].mean()
                if not parquet:  # two scored labels of a feature: the better one is current
                    changed = best_scored_current(request.warehouse, sae.release, sae.sae_id)
                    if changed:
                        print(f"{changed} features keep an earlier label that scores better "
                              "on held-out text than this run's (both stay in the history)")
        except Exception as err:  # the labels are stored: a scoring failure must not lose them
            log.warning(f"held-out scoring failed, labels left unscored: {err}")
    seconds = time.perf_counter() - began
    if shards:  # a run with nothing to do leaves no rows behind
        record(run_row(status="completed", finished_at=utc_now(), n_shards=len(shards),
                       n_shards_skipped=n_shards_skipped, **totals, **model_ids),
               f"run-{run_id}")
    summary: dict[str, object] = dict(
        run_id=run_id, release=sae.release, sae_id=sae.sae_id, model=request.model,
        preset=request.preset, request_hash=request_hash, n_features=len(features),
        n_shards=len(shards), n_shards_skipped=n_shards_skipped, **totals, **model_ids,
        seconds=round(seconds, 1), detection_auroc=mean_auroc,
    )
    if carried is not None:
        summary["carry_over"] = carried.model_dump()
        if carried.sources:  # a new version of a labelled SAE: say what changed
            changes = label_changes(request.warehouse, sae.release, sae.sae_id)
            create_markdown_artifact(
                carry_over_markdown(sae.release, sae.sae_id, carried, changes),
                key=artifact_key("relabel", sae.release, sae.sae_id, "carry-over"),
                description="matched, new and vanished features against earlier versions")
    if parquet:
        summary["out_dir"] = request.out_dir
        labels = pl.concat([r.frames["label"] for r in collected]) if collected else pl.DataFrame(
            schema={"feature": pl.Int32, "failed": pl.Boolean, "skipped": pl.Boolean})
        shown = labels.filter(~pl.col("skipped"))["feature"].head(4).to_list()
        sweeps = (pl.concat([r.frames["scale_metric"] for r in collected])
                  .filter(pl.col("feature").is_in(shown)) if collected else pl.DataFrame())
        plot_dir = request.out_dir
    else:
        summary["warehouse"] = request.warehouse
        summary["query"] = labels_query(sae.release, sae.sae_id)
        summary["snapshot"] = publish_snapshot(request.warehouse) if shards else None
        labels, sweeps = read_labels(request.warehouse, sae.release, sae.sae_id, features)
        plot_dir = f"{request.warehouse}.artifacts"
    summary["png"] = publish_artifacts(summary, labels, sweeps, plot_dir)["png"]
    return summary
