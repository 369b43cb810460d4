"""Layer thresholds end to end: a null drawn by the evaluation, stored in the warehouse, and
picked up by `relabel --layer-threshold` for the same model, layer and settings only."""

from __future__ import annotations

import pytest

from flows.relabel import relabel
from selfexplain.errors import InputError
from selfexplain.evaluation import thresholds
from selfexplain.explain import SelfExplainer
from selfexplain.models import load_model
from selfexplain.warehouse import Warehouse
from selfexplain.warehouse_read import open_reader
from tasks.request import RelabelRequest


def _request(tiny_model_dir, tiny_sae_dir, warehouse, fast, **fields):
    return RelabelRequest(collect=False, model=tiny_model_dir, sae=str(tiny_sae_dir), features="0-5",
                          shard_size=3, scales="0:2:4", samples=2, overrides=fast,
                          warehouse=str(warehouse), **fields)


def test_relabel_uses_the_null_drawn_for_its_layer_and_settings(tmp_path, tiny_model_dir,
                                                                tiny_sae_dir, fast):
    warehouse = tmp_path / "w.duckdb"
    request = _request(tiny_model_dir, tiny_sae_dir, warehouse, fast, layer_threshold=True)
    Warehouse(warehouse).close()
    with pytest.raises(InputError, match="no failure threshold stored.*selfexplain evaluate"):
        relabel(request)

    # the evaluation's null for this config: random directions, their best round trips
    lm = load_model(tiny_model_dir, dtype=request.config().torch_dtype)  # bfloat16, as relabel
    explainer = SelfExplainer(lm, request.config())
    null = thresholds.null_distribution(explainer, 12, seed=0)
    assert set(null) == {"meaning"} and null["meaning"].shape == (12,)
    from tasks.sae import sae_info

    layer = sae_info(str(tiny_sae_dir)).resid_layer  # the SAE's layer
    rows = thresholds.threshold_rows(explainer, null, layer=layer, quantile=0.5)
    with Warehouse(warehouse) as wh:
        wh.write({"layer_threshold": rows})
    drawn = float(rows["threshold"][0])

    summary = relabel(request)
    with open_reader(warehouse) as wh:
        labels = wh.query("SELECT failed, failure_reason, max_roundtrip FROM v_feature_labels")
        config = wh.query("SELECT config_json FROM run WHERE run_id = ?", [summary["run_id"]])
    assert labels.height == 6
    for failed, reason, best in labels.iter_rows():
        assert failed == (best < drawn)
        assert (reason is not None) == failed and (not failed or f"{drawn:g}" in reason)
    assert f'"failure_threshold":{drawn}' in config["config_json"][0].replace(" ", "")

    # another layer's or another grid's null is not used
    other = _request(tiny_model_dir, tiny_sae_dir, warehouse, fast, layer_threshold=True)
    other = other.model_copy(update={"scales": "0:2:5"})
    with pytest.raises(InputError, match="no failure threshold stored"):
        relabel(other)


def test_a_fixed_threshold_and_the_layer_threshold_exclude_each_other(tmp_path, tiny_model_dir,
                                                                     tiny_sae_dir, fast):
    with pytest.raises(Exception, match="not both"):
        _request(tiny_model_dir, tiny_sae_dir, tmp_path / "w.duckdb",
                 {**fast, "failure_threshold": 0.2}, layer_threshold=True)


def test_the_null_key_ignores_what_a_null_does_not_depend_on():
    from selfexplain.config import ExplainConfig

    base = ExplainConfig.from_preset("default")
    assert base.null_hash() == ExplainConfig.from_preset(
        "default", failure_threshold=0.9, selection="composite", batch_rows=7).null_hash()
    assert base.null_hash() != ExplainConfig.from_preset("default", samples_per_scale=2).null_hash()
    assert base.null_hash() != ExplainConfig.from_preset(
        "default", failure_metric="selfsim").null_hash()
