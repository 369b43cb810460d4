"""Scale selection quality: does a metric's top-3 scales contain the best scale?

The best scale of a planted concept is the eligible metric scale (>= min_scale) that minimises the
loss of the known label: the negative log-likelihood of the word as the answer's continuation
(`... is "dog`), computed with the engine's prompt, prefix cache and injection. Each scale-only
strategy (`composite`, `selfsim`, `entropy` of `selfexplain.selection`) scores every grid scale;
we ask whether its 3 best eligible scales contain the best one (`top3_exact`) or one of its grid
neighbours (`top3_near`). Chance is 3 / (eligible scales), reported beside.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl
import torch
from torch import Tensor

from selfexplain.evaluation.planted import sweep_scores
from selfexplain.evaluation.stats import summarise_binary, summary_frame, summary_row
from selfexplain.evaluation.wordlists import Concept
from selfexplain.explain import SelfExplainer
from selfexplain.inject import replaced_at
from selfexplain.prompts import MEANING
from selfexplain.results import FeatureExplanation
from selfexplain.selection import STRATEGIES

SUITE = "scale_selection"
SCALE_METHODS = ("composite", "selfsim", "entropy")
ROW_SCHEMA = {
    "suite": pl.String, "method": pl.String, "feature": pl.Int64, "name": pl.String,
    "kind": pl.String, "best_scale": pl.Float64, "chosen_scales": pl.List(pl.Float64),
    "top3_exact": pl.Boolean, "top3_near": pl.Boolean, "eligible": pl.Int64,
}


@torch.inference_mode()
def label_nll(explainer: SelfExplainer, directions: Tensor, labels: Sequence[str], *,
              kind: str = MEANING, batch_rows: int | None = None) -> Tensor:
    """NLL (n, scales) of each label as the continuation of `kind`'s prompt, per metric scale.

    directions: (n, d_model) unit; the label follows the prompt's opening quote, so it is
    tokenised without a leading space.
    """
    from transformers import DynamicCache

    lm = explainer.lm
    state = explainer.states[kind]
    prompt, prefix = state.prompt, state.prefix
    scales = explainer.scales  # (scales,) absolute
    n_scales = len(scales)
    batch_rows = batch_rows or explainer.config.batch_rows
    positions = (prompt.placeholder_positions - prefix.length).to(lm.device)
    label_ids = [lm.tokenizer(label, add_special_tokens=False).input_ids for label in labels]
    out = torch.zeros(directions.shape[0], n_scales)
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(label_ids):
        by_length.setdefault(len(ids), []).append(i)
    for length, members in by_length.items():
        # rows (concept, scale) of labels of the same length share one input width
        rows = [(i, j) for i in members for j in range(n_scales)]
        for start in range(0, len(rows), batch_rows):
            chunk = rows[start : start + batch_rows]
            vectors = torch.stack([scales[j] * directions[i].float() for i, j in chunk])
            targets = torch.tensor([label_ids[i] for i, _ in chunk], device=lm.device)
            suffix = prompt.input_ids[prefix.length :].to(lm.device)  # (suffix,)
            input_ids = torch.cat([suffix[None, :].expand(len(chunk), -1), targets], dim=1)
            cache = prefix.expanded(lm, len(chunk)) if prefix.length else DynamicCache(
                config=lm.model.config)
            with replaced_at(lm.layers[explainer.injection_layer], positions, vectors):
                logits = lm.model(input_ids=input_ids, past_key_values=cache, use_cache=True,
                                  logits_to_keep=length + 1).logits  # (rows, length + 1, vocab)
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (rows, length, vocab)
            nll = -logp.gather(-1, targets[..., None])[..., 0].sum(dim=-1).cpu()  # (rows,)
            for (i, j), value in zip(chunk, nll.tolist()):
                out[i, j] = value
    return out


def _grid_scores(fe: FeatureExplanation, method: str, *, min_scale: float, entropy_metric: str,
                 alpha: float | None) -> list[float]:
    """A scale-only strategy's score at every metric scale of `fe`'s meaning sweep."""
    sweep = next(s for s in fe.sweeps if s.prompt == MEANING)
    scores = sweep_scores(sweep, min_scale=min_scale, entropy_metric=entropy_metric, alpha=alpha)
    n = len(sweep.scales)
    return STRATEGIES[method](list(range(n)), [""] * n, scores).score


def scale_choice_rows(results: Sequence[FeatureExplanation], concepts: Sequence[Concept],
                      nll: Tensor, *, min_scale: float, entropy_metric: str = "entropy",
                      alpha: float | None = None, methods: Sequence[str] = SCALE_METHODS,
                      top_k: int = 3) -> pl.DataFrame:
    """Per concept and method: the best scale (min label NLL) and whether the top-k contain it."""
    rows = []
    for i, (fe, concept) in enumerate(zip(results, concepts)):
        sweep = next(s for s in fe.sweeps if s.prompt == MEANING)
        scales = sweep.scales
        eligible = [j for j, s in enumerate(scales) if s >= min_scale - 1e-9]
        best = min(eligible, key=lambda j: (float(nll[i, j]), j))
        for method in methods:
            score = _grid_scores(fe, method, min_scale=min_scale, entropy_metric=entropy_metric,
                                 alpha=alpha)
            top = sorted(eligible, key=lambda j: (-score[j], j))[:top_k]
            rows.append(dict(
                suite=SUITE, method=method, feature=concept.feature_id, name=concept.name,
                kind=concept.kind, best_scale=scales[best], chosen_scales=[scales[j] for j in top],
                top3_exact=best in top, top3_near=any(abs(best - j) <= 1 for j in top),
                eligible=len(eligible),
            ))
    return pl.DataFrame(rows, schema=ROW_SCHEMA, orient="row")


def summarise_scale_choice(rows: pl.DataFrame, *, split: str | None = None,
                           top_k: int = 3) -> pl.DataFrame:
    """Methods x (top3_exact, top3_near) with Wilson intervals, plus the chance rates."""
    summary = summarise_binary(rows, ("top3_exact", "top3_near"), suite=SUITE, split=split)
    if rows.height == 0:
        return summary
    chance = []
    # one chance row per run (its grid): methods are `run:strategy` or bare strategy names
    runs = rows.with_columns(pl.col("method").str.split(":").list.first().alias("_run"))
    for (run,), group in runs.group_by(["_run"], maintain_order=True):
        eligible = group.unique("feature")["eligible"].to_list()
        prefix = f"{run}:" if ":" in group["method"][0] else ""
        exact = sum(min(1.0, top_k / e) for e in eligible) / len(eligible)
        near = sum(min(1.0, (top_k * 3) / e) for e in eligible) / len(eligible)
        chance += [
            summary_row(SUITE, f"{prefix}chance", "top3_exact", exact, len(eligible),
                        float("nan"), float("nan"), split, "top_k / eligible scales"),
            summary_row(SUITE, f"{prefix}chance", "top3_near", near, len(eligible),
                        float("nan"), float("nan"), split, "upper bound: 3 windows of 3 scales"),
        ]
    return pl.concat([summary, summary_frame(chance)])


def scale_curves(results: Sequence[FeatureExplanation], concepts: Sequence[Concept]
                 ) -> pl.DataFrame:
    """Per prompt and sampled scale: mean selfsim / entropy / composite at the nearest metric
    scale, and the fraction of samples there that name the concept (`hit`), with counts.

    Feeds the report's score-vs-scale plot; with the faithful preset every concept is sampled at
    the same 32 scales, with the default only at its best few, so `n` varies per scale.
    """
    from selfexplain.evaluation.matching import names_any

    records = []
    for fe, concept in zip(results, concepts):
        pos = concept.pos if concept.kind == "word" else "noun"
        sweeps = {s.prompt: s for s in fe.sweeps}
        for c in fe.candidates:
            sweep = sweeps[c.prompt]
            j = min(range(len(sweep.scales)), key=lambda k: abs(sweep.scales[k] - c.scale))
            records.append(dict(
                prompt=c.prompt, scale=round(sweep.scales[j], 4), selfsim=sweep.selfsim[j],
                entropy=sweep.entropy[j], composite=sweep.composite[j],
                hit=c.text != "" and names_any(c.text, concept.answers, pos) is not None,
            ))
    if not records:
        return pl.DataFrame()
    frame = pl.DataFrame(records).with_columns(pl.col("hit").cast(pl.Float64))
    return (frame.group_by(["prompt", "scale"])
            .agg(pl.col("selfsim", "entropy", "composite", "hit").mean(), pl.len().alias("n"))
            .sort(["prompt", "scale"]))
