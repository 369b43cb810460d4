"""`evaluate`: score labels offline (planted concepts, real SAE features) against baselines.

Composition only: run the suites, write the report (file + markdown artifact), store
`eval_result` / `layer_threshold` rows through the single writer.
"""

from __future__ import annotations

import time

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field

from selfexplain.evaluation.suite import EvalRequest
from tasks.evaluate import evaluate_suite, evaluation_report, evaluation_rows
from tasks.store import write_rows


class EvaluateParams(BaseModel):
    """Flow parameters: what to evaluate, and where the results go."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request: EvalRequest = Field(default_factory=EvalRequest)
    out_dir: str | None = None
    """Folder for report.md, summary.csv and the PNG plots (and the saved planted runs)."""
    warehouse: str | None = None
    """Upsert eval_result and layer_threshold rows here (None: do not store)."""
    eval_id: str | None = None
    """Names this evaluation's rows; default `eval-<unix time>-<suite>-<split>`."""


@flow(name="evaluate", log_prints=True)
def evaluate(params: EvaluateParams | None = None) -> dict[str, object]:
    """Run the evaluation and return its summary rows, report path and rows stored."""
    params = params or EvaluateParams()
    request = params.request
    eval_id = params.eval_id or f"eval-{int(time.time())}-{request.suite}-{request.split}"
    output = evaluate_suite(request, None if params.out_dir is None else f"{params.out_dir}/runs")
    report = evaluation_report(output, params.out_dir)
    stored: dict[str, int] = {}
    if params.warehouse is not None:
        stored = write_rows(params.warehouse, evaluation_rows(output, eval_id))
    print(f"evaluation {eval_id}: {output.summary.height} summary rows; report {report}; "
          f"stored {stored}")
    return {"eval_id": eval_id, "summary": output.summary.to_dicts(), "report": report,
            "stored": stored, "timings": output.timings}


if __name__ == "__main__":
    evaluate()
