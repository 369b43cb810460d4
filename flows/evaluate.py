"""`evaluate`: score labels offline (planted concepts, real SAE features) against baselines.

Composition only: the preflight task (device, judge cache, SAE and statistics, reference labels),
the suites, the judge steps when asked for (reference labels, LLM detection), the report (file,
items Parquet, markdown artifact), then `eval_result` / `layer_threshold` rows (and
`reference_label`, the judge's new `judge_response` answers) through the single writer.
`run_evaluate` is what `selfexplain evaluate` calls: the preflight first, outside Prefect (a bad
input answers in seconds), then the flow.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prefect import flow

from selfexplain.runlock import writer_lock
from tasks.evaluate import (
    EvaluateParams,
    evaluate_suite,
    evaluation_report,
    evaluation_rows,
    judge_labels,
    preflight,
    preflight_task,
)
from tasks.store import write_rows

__all__ = ["EvaluateParams", "evaluate", "run_evaluate"]

WRITE_WAIT_S = 600.0
"""A relabel holding the warehouse: wait this long for it rather than lose the evaluation."""


def run_evaluate(params: EvaluateParams, log: Callable[[str], None] | None = None
                 ) -> dict[str, object]:
    """What `selfexplain evaluate` runs: check the parameters before Prefect starts (seconds: a
    wrong SAE, a damaged warehouse or a bad reference file answers before the model loads), then
    run the flow."""
    preflight(params, log)
    return evaluate(params)


@flow(name="evaluate", log_prints=True)
def evaluate(params: EvaluateParams | None = None) -> dict[str, object]:
    """Run the evaluation; returns its id, summary rows (what `selfexplain evaluate` prints, with
    the notes and timings), report path and the rows stored per table."""
    began = time.perf_counter()
    params = params or EvaluateParams()
    request = params.request
    eval_id = params.eval_id or f"eval-{int(time.time())}-{request.suite}-{request.split}"
    checked = preflight_task(params)
    output = evaluate_suite(request, None if params.out_dir is None else f"{params.out_dir}/runs",
                            params.device, params.threads)
    judge_responses = None
    if params.references or params.judge_detection:
        output, judge_responses = judge_labels(output, params, checked.references)
    output.timings["total"] = round(time.perf_counter() - began, 1)
    report = evaluation_report(output, params.out_dir)
    stored: dict[str, int] = {}
    if params.warehouse is not None:
        frames = evaluation_rows(output, eval_id)
        if checked.references is not None:
            frames["reference_label"] = checked.references
        if judge_responses is not None:  # the judge's new answers: a rerun asks nothing again
            frames["judge_response"] = judge_responses
        with writer_lock(params.warehouse, wait_s=WRITE_WAIT_S):
            stored = write_rows(params.warehouse, frames)
        print(f"warehouse {params.warehouse}: {stored} (eval_id {eval_id})")
    print(f"evaluation {eval_id}: {output.summary.height} summary rows; report {report}; "
          f"stored {stored}")
    return {"eval_id": eval_id, "summary": output.summary.to_dicts(), "notes": output.notes,
            "timings": output.timings, "report": report, "stored": stored}


if __name__ == "__main__":
    evaluate()
