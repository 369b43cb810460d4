"""`watch_saes`: notice new SAEs and relabel the ones this machine can run.

Sources: the installed sae-lens pretrained registry (stored as a snapshot in the warehouse; the
first look is a baseline, not 13,000 "new" SAEs) and a local inbox folder of sae-lens SAE folders.
Each source is diffed against what the warehouse knows; added, restored and removed SAEs are
recorded (removal is soft), one Prefect event is emitted per change, and `relabel` starts for new
SAEs that match the filter: as a subflow, as a deployment run, or by the `prefect.yaml` trigger on
the event (`start: event`). The OSS Prefect server has no webhooks, so this runs on a schedule.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment

from flows.relabel import relabel
from selfexplain.locations import DEFAULT_WAREHOUSE
from tasks.request import RelabelRequest
from tasks.watch import (
    EVENT_ADDED,
    EVENT_REMOVED,
    SaeEntry,
    WatchFilter,
    change_frames,
    diff_saes,
    emit_change,
    read_registry,
    record_changes,
    scan_inbox,
)

Start = Literal["subflow", "deployment", "event", "none"]


@flow(name="watch-saes", log_prints=True)
def watch_saes(warehouse: str = DEFAULT_WAREHOUSE, inbox: str = "inbox",
               registry: str | None = None, filter: WatchFilter | None = None,
               start: Start = "subflow", deployment: str = "relabel/relabel",
               use_registry: bool = True) -> dict[str, object]:
    """Diff the registry and the inbox against the warehouse; relabel matching new SAEs.

    registry: a registry YAML in sae-lens's format (default: the installed sae-lens's own).
    start: how relabel runs start for matching new SAEs (`event`: leave it to the deployment
    trigger on `selfexplain.sae.added`; `none`: record and emit only).
    """
    log = get_run_logger()
    rules = filter or WatchFilter()
    sources: list[tuple[str, list[SaeEntry], str | None]] = []
    if use_registry:
        entries, version = read_registry(registry)
        sources.append(("registry", entries, version))
    inbox_entries = scan_inbox(inbox)
    if inbox_entries is None:
        log.warning(f"inbox folder {inbox} does not exist: inbox SAEs are not checked")
    else:
        sources.append(("inbox", inbox_entries, None))

    summary: dict[str, object] = {"added": [], "removed": [], "restored": [], "baseline": [],
                                  "events": [], "relabel": []}
    to_relabel: list[RelabelRequest] = []
    for source, entries, version in sources:
        diff = diff_saes(warehouse, source, entries)
        matched: dict[tuple[str, str], str] = {}
        for entry in diff.added + diff.restored:
            model = rules.model_for(entry)
            if model is not None:
                matched[entry.key] = model
        record_changes(warehouse, change_frames(diff, entries, set(matched), version))
        if diff.baseline:
            summary["baseline"].append(source)
            print(f"{source}: first look, {len(entries)} SAEs recorded as the baseline")
        print(f"{source}: {len(diff.added)} added, {len(diff.restored)} restored, "
              f"{len(diff.removed)} removed, {len(matched)} to relabel")
        for entry in diff.added + diff.restored:
            model = matched.get(entry.key)
            request = None
            if model is not None:
                # a new version of a labelled SAE reuses its labels (rules may turn it off)
                carry = {} if "out_dir" in rules.relabel else {"carry_over": True}
                request = RelabelRequest.build(model=model, sae=entry.spec,
                                               features=rules.features, warehouse=warehouse,
                                               **{**carry, **rules.relabel})
                to_relabel.append(request)
            payload = {"release": entry.release, "sae_id": entry.sae_id, "source": source,
                       "model_id": entry.model_id, "sae": entry.spec, "model": model,
                       "features": rules.features, "warehouse": warehouse,
                       "request": request.model_dump() if request else None}
            event = emit_change(EVENT_ADDED, entry.release, entry.sae_id, source, payload,
                                matched=model is not None)
            summary["added" if entry in diff.added else "restored"].append(entry.spec)
            summary["events"].append(EVENT_ADDED if event is None else event.event)
        for release, sae_id in diff.removed:
            event = emit_change(EVENT_REMOVED, release, sae_id, source,
                                {"release": release, "sae_id": sae_id, "source": source},
                                matched=False)
            summary["removed"].append(f"{release}/{sae_id}")
            summary["events"].append(EVENT_REMOVED if event is None else event.event)

    for request in to_relabel:
        if start == "subflow":
            state = relabel(request, return_state=True)
            outcome = "completed" if state.is_completed() else f"{state.type.value.lower()}"
            if not state.is_completed():
                log.error(f"relabel of {request.sae} ended {outcome}: {state.message}")
        elif start == "deployment":
            started = run_deployment(deployment, parameters={"request": request.model_dump()},
                                     timeout=0)
            outcome = f"scheduled {started.id}"
        else:
            outcome = f"left to the {start} trigger" if start == "event" else "not started"
        summary["relabel"].append({"sae": request.sae, "model": request.model,
                                   "outcome": outcome})
        print(f"relabel {request.sae} with {request.model}: {outcome}")
    return summary
