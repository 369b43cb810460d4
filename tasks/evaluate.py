"""Evaluation tasks: check the parameters, run a suite, judge the labels, write the report (file +
markdown artifact), build warehouse rows.

Thin wrappers over `selfexplain.evaluation`; the model and SAE load once per process (shared
with the relabel tasks' cache). Frames and small records cross task boundaries, never tensors.
The judge's endpoint is read from this process's environment (SELFEXPLAIN_JUDGE_URL, ...), never
passed as a parameter: its key stays out of the flow run's parameters.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import NamedTuple

import polars as pl
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from selfexplain.evaluation.report import markdown_table, write_report
from selfexplain.evaluation.suite import EvalOutput, EvalRequest, eval_result_rows, run_evaluation
from tasks.artifacts import artifact_key
from tasks.cache import cached_model


class EvaluateParams(BaseModel):
    """Flow parameters: what to evaluate, how to judge it, and where the results go."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request: EvalRequest = Field(default_factory=EvalRequest)
    out_dir: str | None = None
    """Folder for report.md, summary.csv, the PNG plots, items_<suite>.parquet and runs/ (the
    saved planted runs)."""
    warehouse: str | None = None
    """Upsert eval_result and layer_threshold rows here (and reference_label, judge_response when
    references are judged); None: do not store."""
    eval_id: str | None = None
    """Names this evaluation's rows; default `eval-<unix time>-<suite>-<split>`."""
    references: str | None = None
    """Reference labels (Neuronpedia JSON/JSONL or CSV) to import and, with a judge endpoint
    configured, to judge the real suite's labels against."""
    judge_detection: bool = False
    """Real suite: also score every label with the LLM judge on the held-out examples."""
    device: str = "auto"
    """auto (CUDA when present, else CPU), cpu, cuda or cuda:N."""
    threads: int | None = Field(None, ge=0)
    """torch CPU threads (None or 0: torch's own)."""


class Checked(NamedTuple):
    """What the preflight established."""

    references: pl.DataFrame | None
    """The reference labels as `reference_label` rows (None: none asked for)."""


def judge_endpoint():
    """The judge endpoint named by this process's environment, or None."""
    from selfexplain.evaluation.judge import JudgeEndpoint

    return JudgeEndpoint.from_env(os.environ)


def load_sae_and_stats(spec: str):
    """The SAE (cached per process) and its feature statistics."""
    from selfexplain.evaluation.real import feature_stats_for
    from tasks.cache import cached_sae

    return cached_sae(spec), feature_stats_for(spec, cached_sae(spec))


def preflight(params: EvaluateParams, log: Callable[[str], None] | None = None) -> Checked:
    """Everything that can fail before the slow model load: the device, the judge endpoint and
    its cache (warehouse), the SAE and its statistics (real suite), the reference labels.

    Plain Python: `flows.evaluate.run_evaluate` (the CLI) calls it before Prefect starts; the
    flow runs it again as its first task, from this process's caches."""
    from selfexplain.evaluation.judging import judge_cache
    from selfexplain.models import resolve_device

    log = log or (lambda _message: None)
    request = params.request
    resolve_device(params.device)
    if judge_endpoint() is not None and (params.references or params.judge_detection):
        judge_cache(params.warehouse, params.out_dir)  # a damaged warehouse: said now
    sae = None
    if request.suite in ("real", "all"):  # the SAE and its statistics first: a wrong one fails fast
        log(f"loading SAE {request.sae}")
        sae, _stats = load_sae_and_stats(request.sae)
    references = None
    if params.references:
        from selfexplain.references import read_reference_labels

        references = read_reference_labels(
            params.references, release=sae.release if sae else None,
            sae_id=sae.sae_id if sae else None)
    return Checked(references)


@task(name="evaluate-preflight", cache_policy=NO_CACHE, persist_result=False)
def preflight_task(params: EvaluateParams) -> Checked:
    """Check the device, judge cache, SAE, statistics and reference labels before the model loads."""
    return preflight(params, get_run_logger().info)


@task(name="evaluate-suite", cache_policy=NO_CACHE, persist_result=False)
def evaluate_suite(request: EvalRequest, runs_dir: str | None = None, device: str = "auto",
                   threads: int | None = None) -> EvalOutput:
    """Run the request's suites on its model (and SAE for the real suite)."""
    logger = get_run_logger()
    began = time.perf_counter()
    if threads:
        import torch

        torch.set_num_threads(threads)
    sae = stats = None
    if request.suite in ("real", "all"):  # the SAE and its statistics first: a wrong one fails fast
        logger.info("loading SAE %s", request.sae)
        sae, stats = load_sae_and_stats(request.sae)
    logger.info("loading model %s", request.model)
    lm = cached_model(request.model, request.precision, device)
    output = run_evaluation(lm, request, sae=sae, stats=stats, log=logger.info, runs_dir=runs_dir)
    logger.info("evaluation done in %.0f s", time.perf_counter() - began)
    return output


class Judged(NamedTuple):
    output: EvalOutput
    """The evaluation with the judge's items, summaries and notes added."""
    judge_responses: pl.DataFrame | None
    """The judge's new answers (`judge_response` rows), None when no judge was asked."""


@task(name="judge-labels", cache_policy=NO_CACHE, persist_result=False)
def judge_labels(output: EvalOutput, params: EvaluateParams,
                 references: pl.DataFrame | None) -> Judged:
    """Judge the real suite's labels against the reference labels and/or on the held-out
    examples, with the endpoint this process's environment names (none: a note says so)."""
    from selfexplain.evaluation.judging import judge_output
    from tasks.cache import cached_sae

    sae = None
    if params.judge_detection and output.request.suite in ("real", "all"):
        sae = cached_sae(output.request.sae)
    new_rows = judge_output(
        output, judge_endpoint(), references=references, references_path=params.references,
        detection=params.judge_detection, sae=sae, warehouse=params.warehouse,
        out_dir=params.out_dir, log=get_run_logger().info)
    return Judged(output, new_rows)


@task(name="evaluation-report", cache_policy=NO_CACHE, persist_result=False)
def evaluation_report(output: EvalOutput, out_dir: str | None) -> str | None:
    """Write report.md, summary.csv, the PNGs and items_<suite>.parquet to `out_dir` (if given)
    and publish the table as a markdown artifact."""
    request = output.request
    notes = output.notes + [f"timings (s): {output.timings}",
                            f"model: {output.model_id} ({output.model_revision})"]
    path = None
    if out_dir is not None:
        path = str(write_report(out_dir, output.summary,
                                title=f"selfexplain evaluate --suite {request.suite}",
                                notes=notes, curves=output.curves, null=output.null,
                                thresholds=output.thresholds, observed=output.observed,
                                tables={"layer_thresholds": output.layer_thresholds,
                                        "null": output.null_frame}))
        for name, frame in output.items.items():
            frame.write_parquet(f"{out_dir}/items_{name}.parquet")
        get_run_logger().info("report written to %s", path)
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
    release = sae_id = ""
    if output.request.suite in ("real", "all"):
        from tasks.cache import cached_sae

        sae = cached_sae(output.request.sae)
        release, sae_id = sae.release, sae.sae_id
    return {
        "eval_result": eval_result_rows(output, eval_id=eval_id, model_id=output.model_id,
                                        sae_release=release, sae_id=sae_id),
        "layer_threshold": output.layer_thresholds,
    }
