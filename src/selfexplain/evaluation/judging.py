"""The evaluation's judge steps, after the suites ran: reference labels judged against each
method's labels, and delphi's detection and fuzzing scorers on the held-out examples.

Pure functions over an `EvalOutput` (they add items, summaries and notes to it); the endpoint
comes from the caller (`JudgeEndpoint.from_env`), the judge's cache from `judge_cache` (a
read-only read of the warehouse: the judge's new answers go back to the single writer as
`judge_response` rows).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl

from selfexplain.evaluation.judge import SKIP_MESSAGE, Judge, JudgeCache, JudgeEndpoint, judge_rows
from selfexplain.evaluation.suite import EvalOutput


def judge_cache(warehouse: str | None, out_dir: str | None) -> JudgeCache:
    """The judge's cache: the warehouse's `judge_response` rows (a read-only read; the run writes
    its new answers at the end) and `<out_dir>/judge_cache.jsonl`."""
    from selfexplain.warehouse import Warehouse

    rows = None
    if warehouse is not None and Path(warehouse).is_file():
        with Warehouse(warehouse, read_only=True, wait_s=10) as reader:
            if "judge_response" in reader.tables():  # an older warehouse gains it on write
                rows = reader.table("judge_response")
    return JudgeCache(None if out_dir is None else f"{out_dir}/judge_cache.jsonl", rows=rows)


def judge_real(output: EvalOutput, references: pl.DataFrame, endpoint: JudgeEndpoint,
               cache: JudgeCache | None = None) -> pl.DataFrame:
    """Ask the judge whether any top-3 label matches the reference, for each method's labels
    (items `judge`); returns the summary rows."""
    from selfexplain.evaluation.stats import summarise_binary

    judge = Judge(endpoint, cache)
    items = output.items["real"].join(
        references.select(pl.col("feature").cast(pl.Int64),
                          pl.col("description").alias("reference")),
        on="feature", how="inner",
    )
    rows = judge_rows(judge, items)
    output.items["judge"] = rows
    return summarise_binary(rows, ("judge_match",), suite="judge")


def judge_detection(output: EvalOutput, sae, endpoint: JudgeEndpoint,
                    cache: JudgeCache | None = None) -> pl.DataFrame:
    """delphi's detection and fuzzing scorers: the judge tells activating from non-activating
    held-out examples (random and hard negatives), and rightly from wrongly marked tokens, given
    each method's label; balanced accuracy (columns added to items `real`; returns the summary
    rows)."""
    from selfexplain.evaluation.stats import summarise_mean
    from selfexplain.scoring import HeldoutSet, JudgeDetectionScorer, JudgeFuzzingScorer

    held, judge = HeldoutSet.load(sae.stats_dir), Judge(endpoint, cache)
    items = output.items["real"]
    features, labels = items["feature"].to_list(), items["label"].to_list()
    detection = JudgeDetectionScorer(held, sae.decoder, judge).score(features, labels)
    columns = [detection["judge_detection"], detection["judge_detection_hard"]]
    if held.sample_positions is not None:  # statistics of collect format 2 and later
        columns.append(JudgeFuzzingScorer(held, sae.decoder, judge).score(
            features, labels)["judge_fuzzing"])
    output.items["real"] = items.with_columns(columns)
    return summarise_mean(output.items["real"], [c.name for c in columns],
                          suite="heldout_judge")


def judge_output(output: EvalOutput, endpoint: JudgeEndpoint | None, *,
                 references: pl.DataFrame | None = None, references_path: str | None = None,
                 detection: bool = False, sae=None, warehouse: str | None = None,
                 out_dir: str | None = None,
                 log: Callable[[str], None] | None = None) -> pl.DataFrame | None:
    """The judge steps `selfexplain evaluate` asks for, on `output` (notes, items and summaries
    added): the reference labels (`references`, read from `references_path`) judged against the
    real suite's labels, and, with `detection`, the LLM detection of every label on the SAE's
    held-out examples. Without an endpoint nothing is asked and the note says why
    (`SKIP_MESSAGE`, also to `log`). Returns the judge's new `judge_response` rows (None when no
    judge was consulted)."""
    log = log or (lambda _message: None)
    cache = None
    if endpoint is not None and references is not None:
        cache = judge_cache(warehouse, out_dir)
    if references is not None:
        output.notes.append(f"imported {references.height} reference labels from "
                            f"{references_path}")
        if endpoint is None:
            output.notes.append(SKIP_MESSAGE)
            log(SKIP_MESSAGE)
        elif "real" in output.items:
            output.summaries.append(judge_real(output, references, endpoint, cache))
    if detection:
        if endpoint is None:
            output.notes.append(SKIP_MESSAGE)
            log(SKIP_MESSAGE)
        elif "real" in output.items and sae is not None and sae.stats_dir is not None:
            log("real: LLM detection of every label on the held-out examples")
            cache = cache or judge_cache(warehouse, out_dir)
            output.summaries.append(judge_detection(output, sae, endpoint, cache))
    return None if cache is None else cache.new_rows()
