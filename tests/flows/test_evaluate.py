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


def test_evaluate_command_runs_the_flow(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """`selfexplain evaluate` only parses its flags and runs the `evaluate` flow: the flow run is
    recorded by Prefect with the command's parameters, and the flow writes the report folder
    (items Parquet, saved runs), the warehouse rows (eval_result, the imported reference labels)
    and returns what the command prints."""
    import json
    import re

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    import cli.evaluate as command
    from cli.cli import main
    from selfexplain.evaluation.judge import ENV_URL, SKIP_MESSAGE

    monkeypatch.delenv(ENV_URL, raising=False)
    parsed = command.request_from_args  # the tiny model's settings (no flags for them)
    monkeypatch.setattr(command, "request_from_args", lambda args: parsed(args).model_copy(
        update={"overrides": {**parsed(args).overrides, **TINY}, "planted_embedding": False}))
    references = tmp_path / "refs.csv"
    references.write_text("feature,description\n1,dogs\n2,cats\n")
    warehouse, out = tmp_path / "w.duckdb", tmp_path / "report"
    argv = ["evaluate", "--model", tiny_model_dir, "--limit", "2", "--no-classes", "--rerank",
            "none", "--methods", "default,vocabproj", "--precision", "float32", "--device", "cpu",
            "--threads", "1", "--references", str(references), "--out", str(out),
            "--warehouse", str(warehouse)]

    def flow_runs():
        with get_client(sync_client=True) as client:
            return client.read_flow_runs(flow_filter=FlowFilter(
                name=FlowFilterName(any_=["evaluate"])))

    before = {run.id for run in flow_runs()}
    assert main(argv + ["--json"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1  # stdout holds the JSON rows only (Prefect logs to stderr)
    summary = pl.DataFrame(json.loads(printed[0]))
    assert {"default", "vocabproj"} <= set(summary["method"])

    new = [run for run in flow_runs() if run.id not in before]
    assert len(new) == 1 and new[0].state.is_completed()
    request = new[0].parameters["params"]["request"]
    assert request["model"] == tiny_model_dir and request["methods"] == ["default", "vocabproj"]
    assert new[0].parameters["params"]["references"] == str(references)

    assert {"report.md", "summary.csv", "items_planted.parquet"} <= {p.name for p in out.iterdir()}
    assert (out / "runs" / "planted_default_dev.json").is_file()
    assert f"model: {tiny_model_dir}" in (out / "report.md").read_text()
    with open_reader(warehouse, snapshot=False) as wh:
        eval_ids = wh.query("SELECT DISTINCT eval_id FROM eval_result")["eval_id"].to_list()
        refs = wh.table("reference_label")
    assert len(eval_ids) == 1 and re.fullmatch(r"eval-\d+-planted-dev", eval_ids[0])
    assert refs.sort("feature")["description"].to_list() == ["dogs", "cats"]

    # the table, the notes (references imported, no judge configured) and the timings
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "hit_top3" in text and "\nnotes:\n" in text
    assert "- imported 2 reference labels from " + str(references) in text
    assert f"- {SKIP_MESSAGE}" in text
    assert re.search(r"^timings \(s\): .*total [0-9.]+$", text, re.M)
