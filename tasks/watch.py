"""Watching for new SAEs: read the sae-lens registry and the inbox folder, diff them against the
warehouse, record what changed (removal is soft), and emit one Prefect event per change."""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from pydantic import BaseModel, ConfigDict, Field

from selfexplain.errors import InputError
from selfexplain.models import DEFAULT_MODEL_ID
from selfexplain.saes import folder_sae_id, installed_registry_path
from selfexplain.runlock import writer_lock
from selfexplain.warehouse import Warehouse
from selfexplain.warehouse_rows import frame, utc_now
from tasks.retry import retry_transient
from tasks.store import _WRITER

EVENT_ADDED = "selfexplain.sae.added"
FIX_FOLDER = "fix or remove the folder"
EVENT_REMOVED = "selfexplain.sae.removed"


class WatchFilter(BaseModel):
    """Which new SAEs get relabelled, and with which local model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    models: dict[str, str] = Field(default_factory=lambda: {DEFAULT_MODEL_ID: "default"})
    """The SAE's model (registry `model`, or cfg.json metadata.model_name) -> the model spec this
    machine runs it with. SAEs of other models are recorded, never relabelled."""
    releases: list[str] = Field(default_factory=lambda: ["*"])
    """Glob patterns on the release."""
    sae_ids: list[str] = Field(default_factory=lambda: ["*"])
    sources: list[str] = Field(default_factory=lambda: ["inbox", "registry"])
    features: str = "0-15"
    """Features relabelled per new SAE (the full SAE is `relabel --all-features`)."""
    relabel: dict[str, object] = Field(default_factory=dict)
    """Other RelabelRequest fields for triggered runs, e.g. {"preset": "faithful"}."""

    def model_for(self, entry: "SaeEntry") -> str | None:
        """The model spec to relabel `entry` with, or None when it does not match."""
        if entry.source not in self.sources or entry.model_id not in self.models:
            return None
        if not any(fnmatch.fnmatchcase(entry.release, p) for p in self.releases):
            return None
        if not any(fnmatch.fnmatchcase(entry.sae_id, p) for p in self.sae_ids):
            return None
        return self.models[entry.model_id]


@dataclass(frozen=True)
class SaeEntry:
    """One SAE as a source lists it (small: ids and where it lives)."""

    release: str
    sae_id: str
    source: str
    model_id: str | None
    spec: str
    """What `load_sae` takes: RELEASE/SAE_ID, or the inbox folder."""
    hook_name: str | None = None
    d_sae: int | None = None
    path: str | None = None
    repo_id: str | None = None
    neuronpedia_id: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.release, self.sae_id)


def _text(value: object, where: str, field: str, required: bool = False,
          remedy: str = "fix that entry") -> str | None:
    """A registry/cfg field that must be text (or absent): anything else is one InputError."""
    if value is None and not required:
        return None
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # YAML reads `path: 0` as a number
    raise InputError(f"{where}: field {field!r} is {str(value)[:60]!r}, expected text; {remedy}")


def registry_entries(data: object, source: str) -> list[SaeEntry]:
    """The SAEs of a registry in sae-lens's YAML shape, every field checked: a malformed entry
    stops the watch with one line naming it (skipping it would record its SAEs as removed)."""
    if not isinstance(data, dict) or not data:
        raise InputError(f"registry {source} is empty or not a mapping of releases: give a "
                         "registry in sae-lens's pretrained_saes.yaml format")
    entries = []
    for release, spec in data.items():
        where = f"registry {source}, release {release!r}"
        if not isinstance(release, str) or not release.strip():
            raise InputError(f"{where}: the release name must be a string; fix that entry")
        if not isinstance(spec, dict) or not isinstance(spec.get("saes"), list):
            raise InputError(f"{where}: expected a mapping with a `saes` list; fix that entry")
        model_id = _text(spec.get("model"), where, "model")
        repo_id = _text(spec.get("repo_id"), where, "repo_id")
        for i, sae in enumerate(spec["saes"]):
            at = f"{where}, SAE #{i}"
            if not isinstance(sae, dict):
                raise InputError(f"{at}: expected a mapping with an `id`; fix that entry")
            sae_id = _text(sae.get("id"), at, "id", required=True)
            entries.append(SaeEntry(
                release=release, sae_id=sae_id, source="registry", model_id=model_id,
                spec=f"{release}/{sae_id}", path=_text(sae.get("path"), at, "path"),
                repo_id=repo_id, neuronpedia_id=_text(sae.get("neuronpedia"), at, "neuronpedia"),
            ))
    return entries


@task(name="read-registry", cache_policy=NO_CACHE, persist_result=False)
def read_registry(path: str | None = None) -> tuple[list[SaeEntry], str]:
    """Every SAE of the registry YAML (the installed sae-lens one by default) and its version."""
    import yaml

    source = Path(path) if path else installed_registry_path()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(source.read_text(), Loader=loader)
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise InputError(f"cannot read registry {source}: {reason}; give an existing registry "
                         "YAML") from None
    except yaml.YAMLError as err:
        first = " ".join(str(err).split())[:120]
        raise InputError(f"registry {source} is not valid YAML ({first}): fix the file") from None
    entries = registry_entries(data, str(source))
    version = f"file:{source.name}" if path else importlib.metadata.version("sae-lens")
    return entries, version


@task(name="scan-inbox", cache_policy=NO_CACHE, persist_result=False)
def scan_inbox(inbox: str) -> list[SaeEntry] | None:
    """sae-lens folders (`<inbox>/<name>/cfg.json`); None when the inbox folder does not exist.

    Keys mirror `selfexplain.saes.load_sae_folder`: release `local:<name>`, sae id `<name>`.
    A folder still being copied (no weights yet, cfg.json not parseable) is left for a later
    tick; a complete one whose cfg.json has malformed fields stops the watch with one line.
    """
    root = Path(inbox)
    if not root.is_dir():
        return None
    entries = []
    for cfg_path in sorted(root.glob("*/cfg.json")):
        folder = cfg_path.parent
        if folder.name.startswith(".") or folder.name.endswith(".partial"):
            continue
        try:
            cfg = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # half-copied or corrupt: picked up on a later tick once complete
        if not (folder / "sae_weights.safetensors").is_file():
            continue
        where = f"inbox SAE {folder} (cfg.json)"
        meta = cfg.get("metadata") if isinstance(cfg, dict) else None
        if not isinstance(cfg, dict) or not isinstance(meta, (dict, type(None))):
            raise InputError(f"{where}: expected an object with a `metadata` object; {FIX_FOLDER}")
        meta = meta or {}
        d_sae = cfg.get("d_sae")
        if d_sae is not None and (isinstance(d_sae, bool) or not isinstance(d_sae, int)
                                  or d_sae <= 0):
            raise InputError(f"{where}: d_sae is {d_sae!r}, expected a positive integer; {FIX_FOLDER}")
        entries.append(SaeEntry(
            release=f"local:{folder.name}", sae_id=folder_sae_id(folder, cfg), source="inbox",
            model_id=_text(meta.get("model_name") or cfg.get("model_name"), where, "model_name",
                           remedy=FIX_FOLDER),
            spec=str(folder.resolve()),
            hook_name=_text(meta.get("hook_name") or cfg.get("hook_name"), where, "hook_name",
                            remedy=FIX_FOLDER),
            d_sae=d_sae, path=str(folder.resolve()),
        ))
    return entries


@dataclass(frozen=True)
class SaeDiff:
    source: str
    added: list[SaeEntry]
    restored: list[SaeEntry]
    removed: list[tuple[str, str]]
    baseline: bool
    """First look at this source: everything is recorded, nothing counts as new."""


def registry_sha(entries: list[SaeEntry]) -> str:
    lines = sorted(f"{e.release}\t{e.sae_id}" for e in entries)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@task(name="diff-saes", cache_policy=NO_CACHE, persist_result=False, retries=3,
      retry_delay_seconds=[2, 5, 15], retry_condition_fn=retry_transient)
def diff_saes(warehouse: str, source: str, entries: list[SaeEntry]) -> SaeDiff:
    """Compare what `source` lists now with what the warehouse knows from that source."""
    with _WRITER, Warehouse(warehouse, wait_s=10) as wh:
        known = wh.query("SELECT release, sae_id, removed_at IS NOT NULL AS removed FROM sae "
                         "WHERE source = ?", [source])
        snapshots = wh.query("SELECT count(*) AS n FROM registry_snapshot")["n"][0]
    active = {(r, s) for r, s, gone in known.iter_rows() if not gone}
    removed_before = {(r, s) for r, s, gone in known.iter_rows() if gone}
    seen = {e.key for e in entries}
    baseline = source == "registry" and snapshots == 0
    return SaeDiff(
        source=source,
        added=[] if baseline else [e for e in entries if e.key not in active | removed_before],
        restored=[] if baseline else [e for e in entries if e.key in removed_before],
        removed=sorted(active - seen),
        baseline=baseline,
    )


def sae_frame(entries: list[SaeEntry], now) -> pl.DataFrame:
    return frame("sae", [dict(release=e.release, sae_id=e.sae_id, source=e.source,
                              model_id=e.model_id, hook_name=e.hook_name, d_sae=e.d_sae,
                              path=e.path, neuronpedia_id=e.neuronpedia_id, first_seen=now,
                              last_seen=now, removed_at=None) for e in entries])


def change_frames(diff: SaeDiff, entries: list[SaeEntry], matched: set[tuple[str, str]],
                  registry_version: str | None = None) -> dict[str, pl.DataFrame]:
    """The rows recording one source's diff: SAE rows, change history, registry snapshot."""
    now = utc_now()
    changed = entries if diff.baseline or diff.source == "inbox" else diff.added + diff.restored
    frames = {"sae": sae_frame(changed, now)}
    if diff.removed:
        gone = pl.DataFrame(diff.removed, schema=["release", "sae_id"], orient="row")
        frames["sae"] = pl.concat([frames["sae"], frame("sae", [
            dict(release=r, sae_id=s, source=diff.source, first_seen=now, last_seen=now,
                 removed_at=now) for r, s in gone.iter_rows()])])
    changes = ([dict(release=e.release, sae_id=e.sae_id, change="added", source=diff.source,
                     observed_at=now, matched=e.key in matched) for e in diff.added]
               + [dict(release=e.release, sae_id=e.sae_id, change="restored", source=diff.source,
                       observed_at=now, matched=e.key in matched) for e in diff.restored]
               + [dict(release=r, sae_id=s, change="removed", source=diff.source,
                       observed_at=now, matched=False) for r, s in diff.removed])
    frames["sae_change"] = frame("sae_change", changes)
    if diff.source == "registry":
        sha = registry_sha(entries)
        frames["registry_snapshot"] = frame("registry_snapshot", [dict(
            snapshot_sha=sha, sae_lens_version=registry_version,
            n_releases=len({e.release for e in entries}), n_saes=len(entries), first_seen=now,
            last_seen=now)])
        frames["registry_entry"] = frame("registry_entry", [dict(
            snapshot_sha=sha, release=e.release, sae_id=e.sae_id, model_id=e.model_id,
            repo_id=e.repo_id, path=e.path, neuronpedia_id=e.neuronpedia_id) for e in entries])
    return frames


@task(name="record-changes", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 5, 15],
      retry_condition_fn=retry_transient)
def record_changes(warehouse: str, frames: dict[str, pl.DataFrame]) -> dict[str, int]:
    """Write one source's diff in one transaction (registry entries only for a new snapshot)."""
    with _WRITER, writer_lock(warehouse), Warehouse(warehouse, wait_s=10) as wh:
        if "registry_entry" in frames:
            sha = frames["registry_snapshot"]["snapshot_sha"][0]
            stored = wh.query("SELECT count(*) AS n FROM registry_entry WHERE snapshot_sha = ?",
                              [sha])["n"][0]
            if stored:
                frames = {k: v for k, v in frames.items() if k != "registry_entry"}
        return wh.write(frames)


def emit_change(event: str, release: str, sae_id: str, source: str,
                payload: dict[str, object], matched: bool):
    """One Prefect event per added/removed SAE; deployment triggers match on its labels."""
    return emit_event(
        event=event,
        resource={
            "prefect.resource.id": f"selfexplain.sae.{release}/{sae_id}",
            "prefect.resource.name": f"{release}/{sae_id}",
            "selfexplain.source": source,
            "selfexplain.matched": "true" if matched else "false",
        },
        payload=payload,
    )
