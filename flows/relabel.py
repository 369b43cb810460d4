"""`relabel`: label the features of one SAE with one model, shard by shard, into the warehouse.

The flow only composes named steps: the preflight task (SAE, features, warehouse, model, engine
settings, ids out), statistics when the SAE has none, the plan (carry-over, shards already
stored for this request), the run's opening rows, one task per shard whose rows go to the single
writer, held-out scores of the new labels, the closing row, then a snapshot and the monitoring
artifacts. A rerun of the same request skips stored shards; a run killed midway resumes where it
stopped (its unfinished shard is redone). `run_relabel` is what the CLI calls: the preflight
first, outside Prefect (a bad input answers in seconds), then the flow.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from selfexplain.errors import SelfExplainError
from selfexplain.runlock import writer_lock
from selfexplain.warehouse_rows import frame, utc_now
from tasks.artifacts import artifact_key, publish_artifacts, start_progress, update_progress
from tasks.carryover import (
    carry_over_labels,
    carry_over_markdown,
    label_changes,
    store_decoder,
)
from tasks.explain import ShardRows, explain_shard
from tasks.preflight import preflight, preflight_task
from tasks.request import RelabelRequest, SaeInfo, shard_key, split_shards
from tasks.sae import collect_stats, load_sae_info, sae_feature_stats
from tasks.score import best_scored_current, score_carried, score_labels
from tasks.store import (
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


def run_relabel(request: RelabelRequest, announce: Callable[[str], None] = print
                ) -> dict[str, object]:
    """What `selfexplain relabel` runs: hold the warehouse, check the request before Prefect
    starts (seconds; bad input leaves the warehouse as it was), then run the flow."""
    from selfexplain.warehouse import MEMORY

    with writer_lock(request.warehouse if request.out_dir is None else MEMORY):
        preflight(request)
        announce(f"relabel: model {request.model}, SAE {request.sae}, features "
                 f"{'all' if request.all_features else request.features}, shard size "
                 f"{request.shard_size}; starting Prefect (ephemeral) ...")
        return relabel(request)


@flow(name="relabel", log_prints=True)
def relabel(request: RelabelRequest) -> dict[str, object]:
    """Relabel the requested features of one SAE; returns a summary of the run.

    One run per warehouse at a time: a second gets WarehouseInUse naming the first's PID."""
    if request.out_dir is not None:  # a scale-out shard: Parquet, no warehouse to hold
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


@dataclass
class Run:
    """One run's identity and its writer: rows go to the warehouse, or to Parquet shards under
    `request.out_dir` (scale-out)."""

    request: RelabelRequest
    sae: SaeInfo
    request_hash: str
    n_features: int
    started_at: datetime
    began: float
    """time.perf_counter() when the flow began."""
    run_id: str = field(default_factory=lambda: flow_run.id or str(uuid.uuid4()))

    @property
    def parquet(self) -> bool:
        return self.request.out_dir is not None

    def record(self, frames: dict[str, pl.DataFrame], name: str) -> None:
        if self.parquet:
            write_parquet(self.request.out_dir, self.request_hash, name, frames)
        else:
            write_rows(self.request.warehouse, frames)

    def run_row(self, **facts: object) -> dict[str, pl.DataFrame]:
        """The `sae` row and this run's `run` row with `facts` (status, counts, ...)."""
        return {"sae": sae_frame(self.sae),
                "run": run_frame(self.request, self.sae, self.run_id, self.request_hash,
                                 self.n_features, self.started_at, **facts)}


@dataclass
class Plan:
    """Which features this run labels, in which shards."""

    features_to_run: list[int]
    todo: list[int]
    shards: list[list[int]]
    n_shards_skipped: int
    carried: object = None
    """The carry-over result (tasks.carryover), None without --carry-over."""


@dataclass
class Labelled:
    """What the shards produced."""

    totals: dict[str, int] = field(default_factory=lambda: dict(n_labelled=0, n_failed=0,
                                                                n_skipped=0))
    model_ids: dict[str, str] = field(default_factory=dict)
    collected: list[ShardRows] = field(default_factory=list)
    """Every shard's rows (scale-out only: the warehouse holds them otherwise)."""
    labels: list[tuple[int, str | None]] = field(default_factory=list)
    """(feature, label) of every feature labelled (not skipped) in this run."""


def _relabel(request: RelabelRequest) -> dict[str, object]:
    started_at, began = utc_now(), time.perf_counter()
    checked = preflight_task(request)
    if request.layer_threshold:
        print(f"failure threshold {checked.request.config().failure_threshold:g} "
              f"({checked.request.config().failure_metric}): the null drawn for this model and "
              "layer")
    request, features = checked.request, checked.features
    sae = with_statistics(request, checked.sae)
    run = Run(request, sae, request.request_hash(sae.release, sae.sae_id, request.injected(sae)),
              len(features), started_at, began)
    plan = plan_shards(run, features)
    open_run(run, plan)
    labelled = label_shards(run, plan.shards)
    mean_auroc = score_new_labels(run, labelled.labels)
    if plan.shards:  # a run with nothing to do leaves no rows behind
        run.record(run.run_row(status="completed", finished_at=utc_now(),
                               n_shards=len(plan.shards), n_shards_skipped=plan.n_shards_skipped,
                               **labelled.totals, **labelled.model_ids), f"run-{run.run_id}")
    return summarise(run, plan, labelled, features, mean_auroc)


def plan_shards(run: Run, features: list[int]) -> Plan:
    """Carry labels over first (with --carry-over), then leave out what is stored for this
    request; the rest in shards of `shard_size`."""
    request, sae = run.request, run.sae
    carried = None
    features_to_run = features
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
    done = set(stored_features(request.warehouse, run.request_hash, request.out_dir))
    todo = [f for f in features_to_run if f not in done]
    shards = split_shards(todo, request.shard_size)
    n_shards_skipped = len(split_shards([f for f in features_to_run if f in done],
                                        request.shard_size))
    print(f"relabel {sae.release}/{sae.sae_id}: {len(features)} features, {len(shards)} shards "
          f"to run, {len(features_to_run) - len(todo)} features already stored for request "
          f"{run.request_hash}")
    return Plan(features_to_run, todo, shards, n_shards_skipped, carried)


def open_run(run: Run, plan: Plan) -> None:
    """Mark earlier runs of this request that were killed, store the decoder (later versions are
    matched against it), and record this run as running with the SAE's statistics."""
    request, sae = run.request, run.sae
    if not run.parquet:  # this run holds the lock: an earlier one still `running` was killed
        mark_interrupted(request.warehouse, run.request_hash, run.run_id)
        store_decoder(request.warehouse, sae)
    if not plan.shards:
        print(f"nothing to do: all {len(plan.features_to_run)} features to run are stored for "
              f"request {run.request_hash}; change the settings or the seed to label them again"
              if plan.features_to_run else "nothing to do: every requested feature carries a "
              "label over; pass --matched relabel to label them afresh")
        return
    run.record(run.run_row(status="running", n_shards=len(plan.shards),
                           n_shards_skipped=plan.n_shards_skipped), f"run-{run.run_id}")
    stats = sae_feature_stats(request.sae, sae.release, sae.sae_id, plan.todo)
    if stats is not None:  # shipped or collected: fires_on and single-token flags
        run.record({"feature_stats": stats}, f"stats-{run.run_id}")


def label_shards(run: Run, shards: list[list[int]]) -> Labelled:
    """Explain the shards one after another (a process holds one model; scale out for more),
    each shard's rows recorded as it finishes; a failure is recorded on the run, then raised."""
    request, sae = run.request, run.sae
    progress = start_progress(artifact_key("relabel", sae.release, sae.sae_id), len(shards))
    out = Labelled()
    finished = 0
    try:
        for part in shards:
            rows = explain_shard(request, sae, part, shard_key(part), run.run_id,
                                 run.request_hash)
            run.record(rows.frames, f"shard-{rows.key}")
            finished += 1
            for name in out.totals:
                out.totals[name] += getattr(rows, name)
            out.model_ids = {"model_id": rows.model_id, "model_revision": rows.model_revision}
            if run.parquet:
                out.collected.append(rows)
            fresh = rows.frames["label"].filter(~pl.col("skipped"))
            out.labels.extend(zip(fresh["feature"].to_list(), fresh["label"].to_list()))
            update_progress(progress, finished, len(shards))
            print(f"shard {finished}/{len(shards)} (features {rows.features[0]}-"
                  f"{rows.features[-1]}): {rows.n_labelled} labelled, {rows.n_failed} failed, "
                  f"{rows.n_skipped} skipped in {rows.seconds:.1f} s")
    except BaseException as err:
        message = f"{type(err).__name__}: {err}".splitlines()[0][:500]
        try:
            run.record(run.run_row(status="failed", error=message, finished_at=utc_now(),
                                   **out.model_ids), f"run-{run.run_id}")
        except Exception as inner:  # the writer may be the thing that failed
            get_run_logger().warning(f"could not record the failure of run {run.run_id}: {inner}")
        raise
    return out


def score_new_labels(run: Run, labels: list[tuple[int, str | None]]) -> float | None:
    """Held-out detection scores of the new labels (mean AUROC, None when not scored). A
    scoring failure leaves the stored labels unscored, never lost."""
    request, sae = run.request, run.sae
    mean_auroc = None
    if not (labels and request.score):
        return mean_auroc
    try:
        scores = score_labels(request.sae, sae.release, sae.sae_id, run.run_id,
                              [f for f, _ in labels], [t for _, t in labels])
        if scores is not None:
            run.record({"label_score": scores}, f"scores-{run.run_id}")
            mean_auroc = scores["detection_auroc"].mean()
            if not run.parquet:  # two scored labels of a feature: the better one is current
                changed = best_scored_current(request.warehouse, sae.release, sae.sae_id)
                if changed:
                    print(f"{changed} features keep an earlier label that scores better "
                          "on held-out text than this run's (both stay in the history)")
    except Exception as err:
        get_run_logger().warning(f"held-out scoring failed, labels left unscored: {err}")
    return mean_auroc


def summarise(run: Run, plan: Plan, labelled: Labelled, features: list[int],
              mean_auroc: float | None) -> dict[str, object]:
    """The run's summary; publishes the snapshot (warehouse runs), the carry-over changes and the
    monitoring artifacts (table and scale-sweep plot)."""
    request, sae, shards = run.request, run.sae, plan.shards
    summary: dict[str, object] = dict(
        run_id=run.run_id, release=sae.release, sae_id=sae.sae_id, model=request.model,
        preset=request.preset, request_hash=run.request_hash, n_features=len(features),
        n_shards=len(shards), n_shards_skipped=plan.n_shards_skipped, **labelled.totals,
        **labelled.model_ids, seconds=round(time.perf_counter() - run.began, 1),
        detection_auroc=mean_auroc,
    )
    carried = plan.carried
    if carried is not None:
        summary["carry_over"] = carried.model_dump()
        if carried.sources:  # a new version of a labelled SAE: say what changed
            changes = label_changes(request.warehouse, sae.release, sae.sae_id)
            create_markdown_artifact(
                carry_over_markdown(sae.release, sae.sae_id, carried, changes),
                key=artifact_key("relabel", sae.release, sae.sae_id, "carry-over"),
                description="matched, new and vanished features against earlier versions")
    if run.parquet:
        collected = labelled.collected
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
