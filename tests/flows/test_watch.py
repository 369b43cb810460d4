"""watch_saes on a registry fixture and an inbox folder: baseline, an SAE dropped into the inbox
(relabelled), a registry entry added and one removed (soft), an inbox SAE taken away."""

from __future__ import annotations

import shutil

import yaml

from flows.watch_saes import watch_saes
from selfexplain.warehouse import Warehouse
from tasks.watch import EVENT_ADDED, EVENT_REMOVED, WatchFilter


def registry(*ids: str) -> dict:
    """A registry in sae-lens's YAML format; ids are `release:sae_id`."""
    out: dict = {}
    for item in ids:
        release, sae_id = item.split(":")
        out.setdefault(release, {"model": "gpt2", "repo_id": "org/repo", "saes": []})
        out[release]["saes"].append({"id": sae_id, "path": f"{sae_id}/params",
                                     "neuronpedia": f"gpt2-small/{sae_id}"})
    return out


def test_watch_saes_registry_and_inbox(tmp_path, tiny_model_dir, tiny_sae_dir, fast):
    warehouse, inbox, reg = tmp_path / "w.duckdb", tmp_path / "inbox", tmp_path / "registry.yaml"
    inbox.mkdir()
    reg.write_text(yaml.safe_dump(registry("rel-a:a0", "rel-a:a1", "rel-b:b0")))
    rules = WatchFilter(models={"tiny": tiny_model_dir}, features="0-3",
                        relabel={"scales": "0:2:4", "samples": 1, "overrides": fast,
                                 "shard_size": 4})

    def watch() -> dict:
        return watch_saes(str(warehouse), str(inbox), str(reg), rules)

    first = watch()
    assert first["baseline"] == ["registry"] and first["added"] == [] and first["events"] == []

    shutil.copytree(tiny_sae_dir, inbox / "dropped")
    second = watch()
    assert second["added"] == [str((inbox / "dropped").resolve())]
    assert second["events"] == [EVENT_ADDED]
    assert second["relabel"][0]["outcome"] == "completed"

    reg.write_text(yaml.safe_dump(registry("rel-a:a0", "rel-a:a1", "rel-a:a2")))
    third = watch()
    assert third["added"] == ["rel-a/a2"] and third["removed"] == ["rel-b/b0"]
    assert third["events"] == [EVENT_ADDED, EVENT_REMOVED]
    assert third["relabel"] == []  # gpt2 is not a model this machine runs (filter)

    shutil.rmtree(inbox / "dropped")
    fourth = watch()
    assert fourth["removed"] == ["local:dropped/dropped"]

    with Warehouse(warehouse) as wh:
        labels = wh.query("SELECT feature FROM v_feature_labels WHERE release = 'local:dropped' "
                          "ORDER BY feature")
        saes = dict(wh.query("SELECT release || '/' || sae_id AS k, removed FROM v_saes").iter_rows())
        changes = wh.query("SELECT release, change, matched FROM sae_change "
                          "ORDER BY observed_at, change, release")
        snapshots = wh.query("SELECT n_saes FROM registry_snapshot ORDER BY first_seen")
        entries = wh.query("SELECT count(*) AS n FROM registry_entry")["n"][0]
    assert labels["feature"].to_list() == [0, 1, 2, 3]  # removal is soft: labels stay
    assert saes == {"rel-a/a0": False, "rel-a/a1": False, "rel-a/a2": False, "rel-b/b0": True,
                    "local:dropped/dropped": True}
    assert changes.rows() == [("local:dropped", "added", True), ("rel-a", "added", False),
                              ("rel-b", "removed", False), ("local:dropped", "removed", False)]
    assert snapshots["n_saes"].to_list() == [3, 3] and entries == 6
