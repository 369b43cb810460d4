"""Evaluation tasks: run a suite, write the report (file + markdown artifact), build warehouse rows.

Thin wrappers over `selfexplain.evaluation`; the model loads once per process (shared with the
relabel tasks' cache). Frames and small records cross task boundaries, never tensors.
"""

from __future__ import annotations

import time
import polars as pl
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from selfexplain.evaluation.report import markdown_table, write_report
from selfexplain.evaluation.suite import EvalOutput, EvalRequest, eval_result_rows, run_evaluation
from tasks.artifacts import artifact_key
from tasks.cache import cached_model


def load_sae_and_stats(spec: str):
    """The SAE (cached per process) and its feature statistics."""
    from selfexplain.evaluation.real import feature_stats_for
    from tasks.cache import cached_sae

    return cached_sae(spec), feature_stats_for(spec, cached_sae(spec))


@task(name="evaluate-suite", cache_policy=NO_CACHE, persist_result=False)
def evaluate_suite(request: EvalRequest, runs_dir: str | None = None) -> EvalOutput:
    """Run the request's suites on its model (and SAE for the real suite)."""
    logger = get_run_logger()
    began = time.perf_counter()
    lm = cached_model(request.model, request.precision)
    sae = stats = None
    if request.suite in ("real", "all"):
        sae, stats = load_sae_and_stats(request.sae)
    output = run_evaluation(lm, request, sae=sae, stats=stats, log=logger.info, runs_dir=runs_dir)
    output.timings["total"] = round(time.perf_counter() - began, 1)
    logger.info("evaluation done in %.0f s", output.timings["total"])
    return output


@task(name="evaluation-report", cache_policy=NO_CACHE, persist_result=False)
def evaluation_report(output: EvalOutput, out_dir: str | None) -> str | None:
    """Write report.md + PNGs to `out_dir` (if given) and publish the table as a markdown artifact."""
    request = output.request
    notes = output.notes + [f"timings (s): {output.timings}"]
    path = None
    if out_dir is not None:
        path = str(write_report(out_dir, output.summary, title=f"evaluate --suite {request.suite}",
                                notes=notes, curves=output.curves, null=output.null,
                                thresholds=output.thresholds, observed=output.observed,
                                tables={"layer_thresholds": output.layer_thresholds,
                                        "null": output.null_frame}))
    markdown = "\n".join([f"# Evaluation ({request.suite}, {request.split})", ""]
                         + [f"- {n}" for n in notes]
                         + ([f"- report: {path}"] if path else [])
                         + ["", markdown_table(output.summary)])
    create_markdown_artifact(markdown=markdown, key=artifact_key("evaluate", request.suite),
                             description=f"evaluation of {request.methods} on {request.suite}")
    return path


@task(name="evaluation-rows", cache_policy=NO_CACHE, persist_result=False)
def evaluation_rows(output: EvalOutput, eval_id: str) -> dict[str, pl.DataFrame]:
    """`eval_result` and `layer_threshold` rows of an evaluation, ready for `write_rows`."""
    lm = cached_model(output.request.model, output.request.precision)
    release = sae_id = ""
    if output.request.suite in ("real", "all"):
        from tasks.cache import cached_sae

        sae = cached_sae(output.request.sae)
        release, sae_id = sae.release, sae.sae_id
    return {
        "eval_result": eval_result_rows(output, eval_id=eval_id, model_id=lm.model_id,
                                        sae_release=release, sae_id=sae_id),
        "layer_threshold": output.layer_thresholds,
    }
