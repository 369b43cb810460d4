"""End to end under the session's Prefect test server: the relabel flow on a tiny model and SAE
fills the tables, gives one v_feature_labels row per feature, resumes after a kill, and a rerun of
the same request adds no rows."""

from __future__ import annotations

import pytest

import tasks.explain
from flows.relabel import relabel
from selfexplain.warehouse import Warehouse
from selfexplain.warehouse_read import open_reader
from tasks.request import RelabelRequest

TABLES = ["run", "shard_done", "label", "label_current", "explanation", "scale_metric", "sae"]


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so nothing on the way catches it."""


def counts(path) -> dict[str, int]:
    with Warehouse(path) as wh:
        return {t: wh.query(f"SELECT count(*) AS n FROM {t}")["n"][0] for t in TABLES}


def test_relabel_resumes_fills_tables_and_reruns_idempotently(tmp_path, tiny_model_dir,
                                                              tiny_sae_dir, fast, monkeypatch):
    warehouse = tmp_path / "w.duckdb"
    request = RelabelRequest(collect=False, model=tiny_model_dir, sae=str(tiny_sae_dir), features="0-9",
                             shard_size=4, scales="0:2:4", samples=1, overrides=fast,
                             warehouse=str(warehouse))
    real = tasks.explain.explain_features
    calls: list[list[int]] = []

    def killed_on_second_shard(request, sae, features, **kw):
        calls.append(features)
        if len(calls) == 2:
            raise Killed("simulated kill during shard 2")
        return real(request, sae, features, **kw)

    monkeypatch.setattr(tasks.explain, "explain_features", killed_on_second_shard)
    with pytest.raises(BaseException):
        relabel(request)
    first = counts(warehouse)
    assert first["shard_done"] == 1 and first["label_current"] == 4

    calls.clear()
    monkeypatch.setattr(tasks.explain, "explain_features",
                        lambda request, sae, features, **kw: calls.append(features)
                        or real(request, sae, features, **kw))
    summary = relabel(request)
    assert calls == [[4, 5, 6, 7], [8, 9]]  # resumed: the stored shard was not redone
    assert summary["n_shards"] == 2 and summary["n_shards_skipped"] == 1

    with open_reader(warehouse) as wh:
        view = wh.query("SELECT * FROM v_feature_labels ORDER BY feature")
        runs = wh.query("SELECT status FROM v_runs ORDER BY started_at")["status"].to_list()
        per_feature = wh.query("SELECT feature, count(*) AS n FROM scale_metric WHERE "
                               "prompt = 'meaning' GROUP BY feature")["n"].unique().to_list()
    assert view["feature"].to_list() == list(range(10))
    assert view["label"].null_count() == 0
    assert set(view["release"]) == {"local:tiny_sae"}
    assert runs == ["failed", "completed"]
    assert per_feature == [4]  # the whole metric grid
    assert all(n > 0 for n in counts(warehouse).values())

    before = counts(warehouse)
    calls.clear()
    again = relabel(request)
    assert calls == [] and again["n_shards"] == 0
    assert counts(warehouse) == before
    assert summary["png"] and (tmp_path / "w.duckdb.artifacts").is_dir()
