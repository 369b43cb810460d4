"""watch_saes on a registry fixture and an inbox folder: baseline, an SAE dropped into the inbox
(relabelled), a registry entry added and one removed (soft), an inbox SAE taken away."""

from __future__ import annotations

import shutil

import yaml

from flows.watch_saes import watch_saes
from selfexplain.warehouse import Warehouse
from tasks.request import RelabelRequest
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
                        relabel={"scales": "0:2:4", "samples": 1, "overrides": fast, "collect": False,
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


def test_dropped_sae_without_statistics_is_collected_then_labelled(
        tmp_path, tiny_model_dir, tiny_sae_dir, fast):
    """A new SAE folder with weights only: watch relabels it, relabel collects its statistics
    first (a task), injects the typical inputs, and the labels carry fires_on and contexts."""
    from fastapi.testclient import TestClient

    from selfexplain.browse.app import create_app
    from selfexplain.statstore import load_sae
    from tests.unit.test_collect import make_corpus

    warehouse, inbox, reg = tmp_path / "w.duckdb", tmp_path / "inbox", tmp_path / "registry.yaml"
    inbox.mkdir()
    reg.write_text(yaml.safe_dump(registry("rel-a:a0")))
    corpus = make_corpus(tmp_path / "corpus")
    rules = WatchFilter(models={"tiny": tiny_model_dir}, features="0-3", relabel={
        "scales": "0:2:4", "samples": 1, "overrides": fast, "shard_size": 4,
        "corpus": str(corpus), "collect_tokens": 1500})
    watch_saes(str(warehouse), str(inbox), str(reg), rules)  # baseline
    shutil.copytree(tiny_sae_dir, inbox / "fresh")
    assert load_sae(str(inbox / "fresh")).inputs is None
    result = watch_saes(str(warehouse), str(inbox), str(reg), rules)
    assert result["relabel"][0]["outcome"] == "completed"
    collected = load_sae(str(inbox / "fresh"))
    assert collected.inputs is not None and collected.stats_dir is not None

    with Warehouse(warehouse) as wh:
        labels = wh.query("SELECT feature, label, top_tokens FROM v_feature_labels "
                          "WHERE release = 'local:fresh' ORDER BY feature")
        run = wh.query("SELECT request_hash FROM run WHERE release = 'local:fresh'")
    assert labels["feature"].to_list() == [0, 1, 2, 3]
    assert all(labels["top_tokens"].to_list())  # what fires_on shows
    # the run injected the collected typical inputs: they are part of its request hash
    expected = RelabelRequest.build(model=tiny_model_dir, sae=str((inbox / "fresh").resolve()),
                                    **rules.relabel).request_hash(
        "local:fresh", "fresh", collected.injected("input"))
    assert run["request_hash"].to_list() == [expected]
    page = TestClient(create_app(warehouse)).get(
        "/api/feature", params={"release": "local:fresh", "sae_id": "fresh", "feature": 1}).json()
    contexts = page["stats"]["top_contexts"]
    assert contexts and "«" in contexts[0]["text"]
