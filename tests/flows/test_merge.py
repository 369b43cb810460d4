"""Scale-out in miniature: two shard runs write Parquet, one merge upserts them, twice = once."""

from __future__ import annotations

from flows.merge import merge_shards, scale_out
from selfexplain.warehouse import Warehouse
from tasks.request import RelabelRequest


def test_two_parquet_shard_runs_then_merge(tmp_path, tiny_model_dir, tiny_sae_dir, fast):
    warehouse, out_dir = tmp_path / "w.duckdb", tmp_path / "shards"
    request = RelabelRequest(collect=False, model=tiny_model_dir, sae=str(tiny_sae_dir), features="0-5",
                             shard_size=3, scales="0:2:4", samples=1, overrides=fast,
                             warehouse=str(warehouse))
    summary = scale_out(request, str(out_dir), launcher="subflow", shards_per_run=1)
    runs = sorted(p.name.split("-")[0] for p in out_dir.glob("*/*") if p.is_dir())
    assert runs == ["run", "run", "shard", "shard"]  # two shard runs, each with its run row
    assert summary["folders"] == 4
    with Warehouse(warehouse) as wh:
        labels = wh.query("SELECT feature FROM v_feature_labels ORDER BY feature")
        before = {t: wh.table(t).height for t in ("label", "explanation", "run", "shard_done")}
    assert labels["feature"].to_list() == list(range(6))
    assert before["run"] == 2 and before["shard_done"] == 2
    merge_shards(str(out_dir), str(warehouse))
    with Warehouse(warehouse) as wh:
        assert {t: wh.table(t).height for t in before} == before
