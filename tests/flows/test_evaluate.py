"""End to end under the session's Prefect test server: the evaluate flow runs the planted suite on
the tiny model (loaded from its folder, as a deployment would), writes the report and the PNG
plots, stores eval_result and layer_threshold rows in a real DuckDB file whose v_eval_summary
agrees with the flow's own summary, and a rerun of the same eval_id adds no rows.

The tiny model's labels are gibberish: the assertions are on structure and consistency, never on
hit rates."""

from __future__ import annotations

import polars as pl
import pytest

from flows.evaluate import EvaluateParams, evaluate
from selfexplain.evaluation.suite import EvalRequest
from selfexplain.warehouse_read import open_reader

TINY = {"max_new_tokens": 3, "top_scales": 2, "samples_per_scale": 1, "batch_rows": 64}
"""Engine overrides that keep the tiny model's planted run to seconds."""


def stored(path, eval_id: str) -> dict[str, pl.DataFrame]:
    with open_reader(path, snapshot=False) as wh:
        return {
            "eval_result": wh.query("SELECT * FROM eval_result WHERE eval_id = ? ORDER BY suite, "
                                    "release, sae_id, feature, method, metric", [eval_id]),
            "layer_threshold": wh.table("layer_threshold"),
            "v_eval_summary": wh.query("SELECT * FROM v_eval_summary WHERE eval_id = ? ORDER BY "
                                       "suite, release, sae_id, method, metric", [eval_id]),
        }


def test_evaluate_flow_stores_rows_report_and_reruns_idempotently(tmp_path, tiny_model_dir):
    warehouse, out = tmp_path / "w.duckdb", tmp_path / "report"
    request = EvalRequest(suite="planted", limit=2, classes=False, null_directions=2, rerank=(),
                          methods=("default", "vocabproj"), overrides=TINY, model=tiny_model_dir,
                          planted_embedding=False)
    params = EvaluateParams(request=request, out_dir=str(out), warehouse=str(warehouse),
                            eval_id="eval-e2e")
    result = evaluate(params)

    assert result["eval_id"] == "eval-e2e"
    first = stored(warehouse, "eval-e2e")
    rows = first["eval_result"]
    assert rows.height > 0 and result["stored"]["eval_result"] == rows.height
    assert {m.split(":")[0] for m in rows["method"]} == {"default", "vocabproj"}
    assert set(rows["sae_id"]) == {"words_dev"} and set(rows["release"]) == {"planted"}
    hits = rows.filter((pl.col("suite") == "planted") & (pl.col("metric") == "hit_top3"))
    assert sorted(hits["method"]) == ["default", "default", "vocabproj", "vocabproj"]  # x words
    # the default flag reads the round trip: one null (the meaning prompt's best round trip)
    thresholds = first["layer_threshold"]
    assert thresholds.height == result["stored"]["layer_threshold"] == 1
    assert thresholds["prompt"].to_list() == ["meaning"]

    # the view and the flow's summary agree: counts, means and Wilson intervals
    summary = pl.DataFrame(result["summary"]).filter(pl.col("suite") == "planted")
    view = first["v_eval_summary"].filter(pl.col("suite") == "planted")
    assert view["is_latest"].all() and set(view["model_id"]) == {rows["model_id"][0]}
    compared = 0
    for row in summary.iter_rows(named=True):
        match = view.filter((pl.col("method") == row["method"]) & (pl.col("metric") == row["metric"]))
        if match.height == 0:  # a summary-only metric (not stored per item)
            continue
        assert match.height == 1
        got = match.row(0, named=True)
        assert got["n"] == row["n"], row
        assert got["mean"] == pytest.approx(row["value"]), row
        if got["ci_low"] is not None:
            assert (got["ci_low"], got["ci_high"]) == pytest.approx((row["ci_low"], row["ci_high"]))
        compared += 1
    hit = view.filter((pl.col("method") == "default") & (pl.col("metric") == "hit_top3")).row(
        0, named=True)
    assert hit["n"] == 2 and hit["ci_low"] is not None  # a 0/1 metric has its interval
    assert compared >= 2 * 3

    # report.md and its plots, as files (the markdown artifact went to the test server)
    report = out / "report.md"
    assert result["report"] == str(report) and report.is_file()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"scores.png", "scale_curves.png", "null_hist.png"} <= set(pngs)
    assert all(f"({name})" in report.read_text() for name in pngs)
    assert (out / "summary.csv").is_file()

    # the same eval_id again: the same keys, no new rows
    again = evaluate(params)
    second = stored(warehouse, "eval-e2e")
    assert again["stored"]["eval_result"] == rows.height
    assert second["eval_result"].height == rows.height
    key = ["suite", "release", "sae_id", "feature", "method", "metric"]
    assert second["eval_result"].select(key).equals(rows.select(key))
    assert second["layer_threshold"].height == 1
    assert second["v_eval_summary"].height == first["v_eval_summary"].height
