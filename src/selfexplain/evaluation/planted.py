"""Scoring planted concepts: do the labels name the word (or a class member / hypernym)?

Per concept and method, one row:
- `hit_top1`, `hit_top3`: the first / any of the top 3 meaning explanations names an answer;
- `hit_any`: any meaning sample names it (the ceiling a perfect selection could reach), or for a
  baseline any of its `n_any` labels;
- `recovered_exact`: the repeat prompt's recovered token is the word itself; `recovered_match`: it
  names the word (inflections allowed). For a baseline, its top token plays the recovered token;
- `failed`, `max_selfsim`: the engine's failure flag and its evidence.

Re-ranking is pure and cheap: `rerank` orders the SAME sampled candidates under any strategy of
`selfexplain.selection.STRATEGIES` (optionally with another composite alpha), so several selection
methods can be scored from one sampling run (`score_strategies`). Runs can be saved and reloaded as
JSON (`save_results` / `load_results`) to re-score them in another process.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import torch

from selfexplain.config import ExplainConfig
from selfexplain.evaluation.matching import names_any, same_token
from selfexplain.evaluation.stats import summarise_binary
from selfexplain.evaluation.wordlists import Concept, concept_directions
from selfexplain.explain import SelfExplainer, distinct_top, recover_token
from selfexplain.metrics import composite as composite_metric
from selfexplain.metrics import nearest_scale_index
from selfexplain.models import LoadedModel
from selfexplain.prompts import MEANING, REPEAT
from selfexplain.results import Candidate, FeatureExplanation, Sweep
from selfexplain.selection import STRATEGIES, SweepScores, order

SUITE = "planted"
BINARY_METRICS = ("hit_top1", "hit_top3", "hit_any", "recovered_exact", "recovered_match",
                  "failed")

ROW_SCHEMA = {
    "suite": pl.String, "method": pl.String, "feature": pl.Int64, "name": pl.String,
    "kind": pl.String, "pos": pl.String, "split": pl.String, "hit_top1": pl.Boolean,
    "hit_top3": pl.Boolean, "hit_any": pl.Boolean, "n_any": pl.Int64,
    "recovered_exact": pl.Boolean, "recovered_match": pl.Boolean, "failed": pl.Boolean,
    "max_selfsim": pl.Float64, "max_roundtrip": pl.Float64, "matched": pl.String,
    "labels": pl.List(pl.String),
    "recovered": pl.String,
}
"""One row per (method, concept): the per-item result frame of this suite."""


def score_labels(labels: Sequence[Sequence[str]], concepts: Sequence[Concept], *, method: str,
                 samples: Sequence[Sequence[str]] | None = None,
                 recovered: Sequence[str | None] | None = None,
                 failed: Sequence[bool | None] | None = None,
                 max_selfsim: Sequence[float | None] | None = None,
                 max_roundtrip: Sequence[float | None] | None = None,
                 top_n: int = 3) -> pl.DataFrame:
    """Score any method's ranked labels (best first) against the concepts' answers.

    `samples` are every label the method produced (for `hit_any`; defaults to `labels`);
    `recovered` is the method's literal-token answer (None: not offered).
    """
    if len(labels) != len(concepts):
        raise ValueError(f"{len(labels)} label lists for {len(concepts)} concepts")
    rows = []
    for i, concept in enumerate(concepts):
        ranked = [t for t in labels[i] if t]
        pool = [t for t in (samples[i] if samples is not None else labels[i]) if t]
        pos = concept.pos if concept.kind == "word" else "noun"

        def hit(texts: Sequence[str]) -> str | None:
            for text in texts:
                found = names_any(text, concept.answers, pos)
                if found is not None:
                    return found
            return None

        matched = hit(ranked[:top_n])
        token = recovered[i] if recovered is not None else None
        rows.append(dict(
            suite=SUITE, method=method, feature=concept.feature_id, name=concept.name,
            kind=concept.kind, pos=concept.pos, split=concept.split,
            hit_top1=hit(ranked[:1]) is not None, hit_top3=matched is not None,
            hit_any=hit(pool) is not None, n_any=len(pool),
            recovered_exact=None if recovered is None
            else token is not None and any(same_token(token, a) for a in concept.answers),
            recovered_match=None if recovered is None
            else token is not None and names_any(token, concept.answers, pos) is not None,
            failed=None if failed is None else failed[i],
            max_selfsim=None if max_selfsim is None else max_selfsim[i],
            max_roundtrip=None if max_roundtrip is None else max_roundtrip[i],
            matched=matched, labels=list(ranked[:top_n]), recovered=token,
        ))
    return pl.DataFrame(rows, schema=ROW_SCHEMA, orient="row")


def score_planted(results: Sequence[FeatureExplanation], concepts: Sequence[Concept], *,
                  method: str = "selfexplain", top_n: int = 3) -> pl.DataFrame:
    """Score the engine's own choice (its `explanations` and `recovered_token`) per concept."""
    return score_labels(
        [[c.text for c in fe.explanations] for fe in results], concepts, method=method,
        samples=[[c.text for c in fe.candidates if c.prompt == MEANING] for fe in results],
        recovered=[fe.recovered_token for fe in results],
        failed=[fe.failed for fe in results], max_selfsim=[fe.max_selfsim for fe in results],
        max_roundtrip=[fe.max_roundtrip for fe in results], top_n=top_n,
    )


# -- re-ranking the same samples ---------------------------------------------------------------

def sweep_scores(sweep: Sweep, *, min_scale: float, entropy_metric: str = "entropy",
                 alpha: float | None = None) -> SweepScores:
    """A stored sweep as the `SweepScores` a strategy reads; `alpha` recomputes the composite."""
    scales = torch.tensor(sweep.scales)
    selfsim = torch.tensor(sweep.selfsim)
    scored = torch.tensor(sweep.entropy if entropy_metric == "entropy" else sweep.crossent)
    comp = (torch.tensor(sweep.composite) if alpha is None
            else composite_metric(selfsim[None], scored[None], scales, alpha, min_scale)[0])
    return SweepScores(scales, selfsim, scored, comp, min_scale)


def rerank(fe: FeatureExplanation, strategy: str | Callable, *, min_scale: float,
           entropy_metric: str = "entropy", alpha: float | None = None,
           prompt: str = MEANING) -> list[Candidate]:
    """`fe`'s candidates of `prompt`, best first under `strategy` (name or callable); pure.

    Mirrors the engine: each sample is scored at its nearest metric scale and an empty answer ranks
    below every non-empty one.
    """
    rank_fn = STRATEGIES[strategy] if isinstance(strategy, str) else strategy
    sweep = next((s for s in fe.sweeps if s.prompt == prompt), None)
    candidates = [c for c in fe.candidates if c.prompt == prompt]
    if sweep is None or not candidates:
        return []
    scores = sweep_scores(sweep, min_scale=min_scale, entropy_metric=entropy_metric, alpha=alpha)
    grid = nearest_scale_index(scores.scales, torch.tensor([c.scale for c in candidates])).tolist()
    roundtrip = [c.extra.get("roundtrip") for c in candidates]
    ranked = rank_fn(grid, [c.text for c in candidates], scores,
                     roundtrip=None if None in roundtrip else roundtrip)
    keyed = [s if candidates[i].text else s - 1e6 for i, s in enumerate(ranked.score)]
    return [candidates[i] for i in order(keyed)]


def reranked_token(fe: FeatureExplanation, strategy: str | Callable, token_recovery: str,
                   **rerank_kw: object) -> str | None:
    """The token the engine would recover had it ranked by `strategy`: with `answer`, the
    re-ranked repeat prompt's top answer for `composite`, else its majority answer; the `peak`
    token does not depend on the ranking, so the engine's own stands."""
    if token_recovery == "peak":
        return fe.recovered_token
    return recover_token(rerank(fe, strategy, prompt=REPEAT, **rerank_kw),  # type: ignore[arg-type]
                         majority=strategy != "composite")


def score_strategies(results: Sequence[FeatureExplanation], concepts: Sequence[Concept],
                     strategies: dict[str, str | Callable] | Sequence[str], *, min_scale: float,
                     entropy_metric: str = "entropy", alpha: float | None = None,
                     prefix: str = "", top_n: int = 3,
                     token_recovery: str = "answer") -> pl.DataFrame:
    """Score several selection strategies on the same sampled candidates (no re-sampling).

    `strategies` is a list of names in STRATEGIES or {method name: name or callable}. The method
    column is `prefix + name`. Tokens are recovered as the engine would under each strategy
    (`reranked_token`).
    """
    named = strategies if isinstance(strategies, dict) else {s: s for s in strategies}
    frames = []
    for name, strategy in named.items():
        kw = dict(min_scale=min_scale, entropy_metric=entropy_metric, alpha=alpha)
        # the labels the engine would keep under this ranking: distinct, never punctuation only
        labels = [distinct_top([c.text for c in rerank(fe, strategy, **kw)], top_n)
                  for fe in results]
        recovered = [reranked_token(fe, strategy, token_recovery, **kw) for fe in results]
        frames.append(score_labels(
            labels, concepts, method=prefix + name,
            samples=[[c.text for c in fe.candidates if c.prompt == MEANING] for fe in results],
            recovered=recovered, failed=[fe.failed for fe in results],
            max_selfsim=[fe.max_selfsim for fe in results],
            max_roundtrip=[fe.max_roundtrip for fe in results], top_n=top_n,
        ))
    return pl.concat(frames)


# -- running -----------------------------------------------------------------------------------

@dataclass
class PlantedRun:
    """One sampling run over planted concepts: everything needed to re-score it later."""

    concepts: list[Concept]
    results: list[FeatureExplanation]
    config: ExplainConfig
    min_scale: float
    """Absolute min scale of the run (config.min_scale times the model's unit)."""
    unit: float
    seconds: float
    extra: dict[str, object] = field(default_factory=dict)

    def frame(self, method: str | None = None) -> pl.DataFrame:
        """Per-concept rows for the engine's own choice."""
        return score_planted(self.results, self.concepts, method=method or self.config.preset,
                             top_n=self.config.top_n)

    def strategies(self, strategies: Sequence[str] | dict[str, str | Callable], *,
                   alpha: float | None = None, prefix: str | None = None) -> pl.DataFrame:
        """Per-concept rows for other selection strategies on the same samples."""
        return score_strategies(
            self.results, self.concepts, strategies, min_scale=self.min_scale,
            entropy_metric=self.config.entropy_metric, alpha=alpha,
            prefix=f"{self.config.preset}:" if prefix is None else prefix, top_n=self.config.top_n,
            token_recovery=self.config.token_recovery,
        )


def run_planted(lm: LoadedModel, config: ExplainConfig, concepts: Sequence[Concept], *,
                explainer: SelfExplainer | None = None,
                progress: Callable[[int], None] | None = None) -> PlantedRun:
    """Plant each concept's direction at the injection layer and explain it with `config`."""
    import time

    began = time.perf_counter()
    explainer = explainer or SelfExplainer(lm, config)
    directions = concept_directions(lm, list(concepts), config.injection_layer)
    results = explainer.explain(directions, [c.feature_id for c in concepts],
                                [c.name for c in concepts], progress)
    return PlantedRun(list(concepts), results, config, explainer.min_scale, explainer.unit,
                      time.perf_counter() - began)


def summarise_planted(rows: pl.DataFrame, *, split: str | None = None,
                      settings: dict[str, str] | None = None) -> pl.DataFrame:
    """Methods x metrics with counts and Wilson intervals (words and classes reported apart)."""
    frames = []
    for kind in ("word", "class"):
        part = rows.filter(pl.col("kind") == kind)
        if part.height:
            suite = SUITE if kind == "word" else f"{SUITE}_class"
            frames.append(summarise_binary(part, BINARY_METRICS, suite=suite, split=split,
                                           settings=settings))
    return pl.concat(frames) if frames else summarise_binary(rows, BINARY_METRICS, suite=SUITE)


# -- persistence -------------------------------------------------------------------------------

def save_results(path: str | Path, run: PlantedRun) -> Path:
    """Write a run (concepts, config, every candidate and sweep) as JSON for later re-scoring."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": json.loads(run.config.model_dump_json()),
        "min_scale": run.min_scale, "unit": run.unit, "seconds": run.seconds, "extra": run.extra,
        "concepts": [c._asdict() for c in run.concepts],
        "results": [fe.to_dict(full=True) for fe in run.results],
    }
    path.write_text(json.dumps(payload))
    return path


def load_results(path: str | Path) -> PlantedRun:
    """Read a run written by `save_results`."""
    payload = json.loads(Path(path).read_text())
    config = ExplainConfig(**payload["config"])
    concepts = [Concept(**{**c, "members": tuple(c["members"]), "answers": tuple(c["answers"])})
                for c in payload["concepts"]]
    results = [_feature_from_dict(d) for d in payload["results"]]
    return PlantedRun(concepts, results, config, payload["min_scale"], payload["unit"],
                      payload["seconds"], payload.get("extra", {}))


def _feature_from_dict(data: dict) -> FeatureExplanation:
    candidates = [Candidate(**c) for c in data["candidates"]]
    meaning = sorted((c for c in candidates if c.prompt == MEANING), key=lambda c: c.rank)
    return FeatureExplanation(
        feature=data["feature"], name=data["name"],
        explanations=[c for c in meaning if c.chosen],
        recovered_token=data["recovered_token"], recovered_reliable=data["recovered_reliable"],
        failed=data["failed"], failure_reason=data["failure_reason"],
        max_selfsim=data["max_selfsim"], max_selfsim_repeat=data["max_selfsim_repeat"],
        candidates=candidates, sweeps=[Sweep(**s) for s in data["sweeps"]],
        max_roundtrip=data.get("max_roundtrip"),
        seconds=data.get("seconds", 0.0),
    )
