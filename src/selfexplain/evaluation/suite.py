"""What `selfexplain evaluate` runs: the planted and real suites, every method side by side.

One frozen `EvalRequest` (built at the edge: CLI flags or flow parameters) goes in; an `EvalOutput`
(per-item frames, a methods x metrics summary with counts and 95% intervals, plot data, layer
thresholds) comes out. `eval_result_rows` turns the items into the warehouse's `eval_result` rows.
No Prefect, no environment, no files except what the request names.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from selfexplain.config import ExplainConfig
from selfexplain.errors import InputError
from selfexplain.evaluation import baselines, planted, real, scale_quality, thresholds
from selfexplain.evaluation.stats import summary_frame
from selfexplain.evaluation.wordlists import concept_directions, load_classes, load_words
from selfexplain.models import LoadedModel

SELF_METHODS = ("default", "faithful", "decoder")
"""Self-explanation methods: the presets of ExplainConfig; `decoder` is the default preset on
decoder rows (what an SAE without statistics gets; real suite only)."""
BASELINES = ("vocabproj", "tokenchange", "maxact")
ALL_METHODS = SELF_METHODS + BASELINES
DEFAULT_METHODS = ("default", "faithful", "vocabproj", "tokenchange", "maxact")
RERANK_STRATEGIES = ("composite", "selfsim", "entropy", "consensus", "roundtrip")
"""Selection strategies re-scored on each self-explanation run's samples (no re-sampling)."""


class EvalRequest(BaseModel):
    """Everything one evaluation needs; defaults live here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    suite: Literal["planted", "real", "all"] = "planted"
    limit: int = Field(50, ge=1)
    """Planted: the first N words of the split. Real: N sampled live SAE features."""
    split: Literal["dev", "test"] = "dev"
    methods: tuple[str, ...] = DEFAULT_METHODS
    classes: bool = True
    """Planted: also the split's class concepts (animals, colours, ...)."""
    rerank: tuple[str, ...] = RERANK_STRATEGIES
    """Re-score each self-explanation run's samples under these selection strategies."""
    scale_quality: bool = True
    null_directions: int = Field(32, ge=0)
    """Random directions per self-explanation method for the failure-threshold null (0: skip)."""
    null_kind: Literal["isotropic", "residual"] = "isotropic"
    threshold_quantile: float = Field(0.95, gt=0, lt=1)
    tokenchange_scale: float = Field(1.0, gt=0)
    """TokenChange amplification, in units of the typical residual norm at the injection layer."""
    baseline_k: int = Field(10, ge=1)
    planted_embedding: bool = True
    """Planted: also the MiniLM similarity AUROC of each method's top label to its word (credits
    synonyms and definitions that the strict name match misses)."""
    seed: int = 0
    sae: str = "default"
    model: str = "default"
    overrides: dict[str, Any] = Field(default_factory=dict)
    """ExplainConfig fields applied to every self-explanation preset (e.g. for tiny test models);
    leave empty to evaluate the presets as they are."""

    @property
    def precision(self) -> str:
        """The model precision of this evaluation (`overrides`, else the library's float32)."""
        return str(self.overrides.get("precision", "float32"))

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [m for m in methods if m not in ALL_METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}: choose from {list(ALL_METHODS)}")
        if not methods:
            raise ValueError("give at least one method")
        return tuple(dict.fromkeys(methods))

    @field_validator("rerank")
    @classmethod
    def _rerank(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        from selfexplain.selection import STRATEGIES

        unknown = [n for n in names if n not in STRATEGIES]
        if unknown:
            raise ValueError(f"unknown selection strategy {unknown}: choose from {list(STRATEGIES)}")
        return names


@dataclass
class EvalOutput:
    """Per-item frames by suite, the summary, and what the report plots."""

    request: EvalRequest
    items: dict[str, pl.DataFrame] = field(default_factory=dict)
    summaries: list[pl.DataFrame] = field(default_factory=list)
    curves: dict[str, pl.DataFrame] = field(default_factory=dict)
    null: dict[str, list[float]] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    threshold_rows: list[pl.DataFrame] = field(default_factory=list)
    observed: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    """Method -> settings hash of its config."""
    runs: dict[str, planted.PlantedRun] = field(default_factory=dict)
    runs_dir: Path | None = None
    model_id: str = ""
    """The evaluated model's id and revision (`run_evaluation` sets them)."""
    model_revision: str = ""

    @property
    def summary(self) -> pl.DataFrame:
        frames = [f for f in self.summaries if f.height]
        return pl.concat(frames) if frames else summary_frame([])

    @property
    def null_frame(self) -> pl.DataFrame:
        """The null draws as rows (`prompt (method)`, index, score: the failure metric of that
        method's config, max self-similarity or best round trip), for the report folder."""
        rows = [dict(null=key, index=i, score=v)
                for key, values in self.null.items() for i, v in enumerate(values)]
        return pl.DataFrame(rows, schema={"null": pl.String, "index": pl.Int64,
                                          "score": pl.Float64}, orient="row")

    @property
    def layer_thresholds(self) -> pl.DataFrame:
        frames = [f for f in self.threshold_rows if f.height]
        return pl.concat(frames) if frames else pl.DataFrame(schema=thresholds.THRESHOLD_SCHEMA)


Log = Callable[[str], None]


def _config(method: str, request: EvalRequest) -> ExplainConfig:
    if method == "decoder":
        return ExplainConfig.from_preset("default", **{**request.overrides, "seed": request.seed,
                                                       "direction": "decoder"})
    return ExplainConfig.from_preset(method, **{**request.overrides,  # type: ignore[arg-type]
                                                "seed": request.seed})


def run_evaluation(lm: LoadedModel, request: EvalRequest, *, sae=None, stats=None,
                   embedder=None, log: Log | None = None,
                   runs_dir: str | Path | None = None) -> EvalOutput:
    """Run the requested suites; `sae` / `stats` (feature stats frame) are needed for `real`.

    With `runs_dir`, each planted self-explanation run is saved there as JSON as soon as it is
    done (`planted_<method>_<split>.json`), to be re-scored later (`planted.load_results`).
    """
    log = log or (lambda _msg: None)
    out = EvalOutput(request, model_id=lm.model_id, model_revision=lm.revision)
    out.runs_dir = None if runs_dir is None else Path(runs_dir)
    if request.suite in ("planted", "all"):
        run_planted_suite(lm, request, out, log, embedder)
    if request.suite in ("real", "all"):
        if sae is None or stats is None:
            raise InputError("the real suite needs the SAE and its feature stats")
        run_real_suite(lm, request, out, sae, stats, embedder, log)
    return out


def _progress(log: Log, what: str, total: int) -> Callable[[int], None]:
    """A progress callback logging `what: done/total` after each chunk."""
    done = 0
    began = time.perf_counter()

    def tick(n: int) -> None:
        nonlocal done
        done += n
        log(f"{what}: {done}/{total} ({time.perf_counter() - began:.0f} s)")

    return tick


def _null_name(request: EvalRequest) -> str:
    return f"null{int(round(request.threshold_quantile * 100))}"


def _flag_basis(config) -> tuple[str, dict[str, float]]:
    """The score column the config's failure flag reads, and its fixed threshold by name (the
    post's 0.01 for self-similarity, the configured one for the round trip)."""
    if config.failure_metric == "roundtrip":
        return "max_roundtrip", {f"{config.failure_threshold:g}": config.failure_threshold}
    return "max_selfsim", {"0.01": thresholds.POST_THRESHOLD}


def _null_threshold(out: EvalOutput, request: EvalRequest, explainer, method: str, layer: int,
                    log: Log) -> float | None:
    """The meaning prompt's null threshold for this method's config at `layer` (computed once per
    evaluation; None when the request asks for no null)."""
    key = f"meaning ({method})"
    if key in out.thresholds:
        return out.thresholds[key]
    if not request.null_directions:
        return None
    began = time.perf_counter()
    log(f"{method}: null of {request.null_directions} random directions ({request.null_kind})")
    null = thresholds.null_distribution(explainer, request.null_directions, seed=request.seed,
                                        kind=request.null_kind, layer=layer)
    rows = thresholds.threshold_rows(explainer, null, layer=layer,
                                     quantile=request.threshold_quantile)
    out.threshold_rows.append(rows)
    for prompt, values in null.items():
        out.null[f"{prompt} ({method})"] = values.tolist()
    out.thresholds[key] = float(rows.filter(pl.col("prompt") == "meaning")["threshold"][0])
    _timed(out, f"null/{method}", began)
    return out.thresholds[key]


def _timed(out: EvalOutput, key: str, began: float) -> None:
    out.timings[key] = round(time.perf_counter() - began, 1)


def run_planted_suite(lm: LoadedModel, request: EvalRequest, out: EvalOutput, log: Log,
                      embedder=None) -> None:
    from selfexplain.explain import SelfExplainer

    concepts = load_words(request.split, request.limit)
    if request.classes:
        concepts += load_classes(request.split)
    split = request.split
    out.notes.append(
        f"planted: {sum(c.kind == 'word' for c in concepts)} words and "
        f"{sum(c.kind == 'class' for c in concepts)} classes of the {split.upper()} list; "
        "hit = a top-3 meaning explanation names the word (inflections allowed) or, for a class, "
        "a member or hypernym"
    )
    frames: list[pl.DataFrame] = []
    scale_frames: list[pl.DataFrame] = []
    flag_frames: list[pl.DataFrame] = []
    unit = None
    for method in (m for m in request.methods if m in SELF_METHODS and m != "decoder"):
        began = time.perf_counter()
        config = _config(method, request)
        log(f"planted: {method} on {len(concepts)} concepts")
        explainer = SelfExplainer(lm, config)
        unit = explainer.unit if config.scale_unit == "relative" else unit
        run = planted.run_planted(lm, config, concepts, explainer=explainer,
                                  progress=_progress(log, f"planted: {method}", len(concepts)))
        out.runs[method] = run
        if out.runs_dir is not None:
            planted.save_results(out.runs_dir / f"planted_{method}_{split}.json", run)
        out.settings[method] = config.settings_hash()
        rows = run.frame(method)
        frames.append(rows)
        own = [rows]
        if request.rerank:
            own.append(run.strategies(list(request.rerank), prefix=f"{method}:"))
            frames.append(own[-1])
        out.curves[method] = scale_quality.scale_curves(run.results, concepts)
        _timed(out, f"planted/{method}", began)
        if request.scale_quality:
            began = time.perf_counter()
            directions = concept_directions(lm, concepts, config.injection_layer)
            # the known label: the word, or a class's first hypernym ("animal")
            label = [c.members[0] if c.kind == "word" else c.answers[len(c.members)]
                     for c in concepts]
            nll = scale_quality.label_nll(explainer, directions, label)
            part = scale_quality.scale_choice_rows(
                run.results, concepts, nll, min_scale=run.min_scale,
                entropy_metric=config.entropy_metric)
            scale_frames.append(part.with_columns(pl.lit(method).alias("run")))
            _timed(out, f"scale_quality/{method}", began)
        flag_frames.append(thresholds.engine_flag_summary(  # the flag the engine stores
            pl.concat(own).filter(pl.col("kind") == "word"), outcome="hit_top3", split=split))
        threshold = _null_threshold(out, request, explainer, method, config.injection_layer, log)
        if threshold is not None:
            score, named = _flag_basis(config)
            words_rows = rows.filter(pl.col("kind") == "word")
            out.observed[f"meaning ({method}) planted words"] = words_rows[score].to_list()
            flag_frames.append(thresholds.flag_summary(
                words_rows, {**named, _null_name(request): threshold},
                outcome="hit_top3", split=split, score=score))
            flag_frames.append(thresholds.selfsim_aurocs(
                words_rows, out.null[f"meaning ({method})"], method=method, split=split,
                score=score))

    baseline_methods = [m for m in request.methods if m in ("vocabproj", "tokenchange")]
    if baseline_methods:
        began = time.perf_counter()
        layer = _config("default", request).injection_layer
        directions = concept_directions(lm, concepts, layer)
        for method in baseline_methods:
            log(f"planted: {method}")
            labels = _baseline_labels(lm, method, directions, layer, request, unit)
            frames.append(planted.score_labels(labels, concepts, method=method, samples=labels,
                                               recovered=[ls[0] if ls else None for ls in labels]))
        _timed(out, "planted/baselines", began)
    items = pl.concat(frames) if frames else pl.DataFrame(schema=planted.ROW_SCHEMA)
    out.items["planted"] = items
    out.summaries.append(planted.summarise_planted(items, split=split, settings=out.settings))
    if request.planted_embedding and items.height:
        began = time.perf_counter()
        embedder = embedder or real.Embedder()
        sims = []
        for (kind, method), group in items.group_by(["kind", "method"], maintain_order=True):
            labels = [(", ".join(ls[:5]) if str(method) in BASELINES else ls[0]) if ls else None
                      for ls in group["labels"].to_list()]
            suite = "planted_embedding" if kind == "word" else "planted_embedding_class"
            sims.append(real.label_target_similarity(
                str(method), group["name"].to_list(), labels, group["name"].to_list(), embedder,
                seed=request.seed, suite=suite))
        keys = items.select("method", "name", "feature", "kind").unique(["method", "name"])
        sim_rows = pl.concat(sims).join(keys, on=["method", "name"], how="left")
        out.items["planted_embedding"] = sim_rows
        for suite in ("planted_embedding", "planted_embedding_class"):
            part = sim_rows.filter(pl.col("suite") == suite)
            if part.height:
                out.summaries.append(real.summarise_auroc(part, suite=suite, split=split))
        _timed(out, "planted/embedding", began)
    if scale_frames:
        scale_rows = pl.concat(scale_frames).with_columns(
            (pl.col("run") + ":" + pl.col("method")).alias("method")).drop("run")
        out.items["scale_selection"] = scale_rows
        out.summaries.append(scale_quality.summarise_scale_choice(scale_rows, split=split))
    out.summaries.extend(flag_frames)


def _baseline_labels(lm: LoadedModel, method: str, directions, layer: int, request: EvalRequest,
                     unit: float | None) -> list[list[str]]:
    if method == "vocabproj":
        return baselines.vocabproj(lm, directions, k=request.baseline_k)
    if unit is None:
        from selfexplain.explain import NORM_TEXTS
        from selfexplain.forward import residual_norm

        unit = residual_norm(lm, layer, list(NORM_TEXTS))
    return baselines.tokenchange(lm, directions, layer, request.tokenchange_scale * unit,
                                 k=request.baseline_k)


def sample_features(stats: pl.DataFrame, limit: int, seed: int,
                    split: str | None = None) -> list[int]:
    """A seeded sample of `limit` live features (density > 0, with contexts), sorted.

    `split` "dev" draws from even feature ids only, "test" from odd ones (latent order is
    arbitrary, so parity is a fair split): method changes are tuned on DEV features, reported on
    TEST ones.

    Stratified: up to half are single-token features (token recovery is scored on those only;
    they are about 1 in 7 of the default SAE), the rest are drawn from the other live features.
    """
    live = stats.filter((pl.col("density") > 0) & (pl.col("top_contexts").list.len() > 0))
    if split is not None:
        live = live.filter(pl.col("feature") % 2 == (0 if split == "dev" else 1))
    single = live.filter(pl.col("single_token"))["feature"].to_list()
    other = live.filter(~pl.col("single_token"))["feature"].to_list()
    rng = random.Random(seed)
    n_single = min(len(single), limit // 2)
    picked = rng.sample(single, n_single)
    picked += rng.sample(other, min(len(other), limit - n_single))
    if len(picked) < limit:  # few non-single features: top up from the single-token ones
        rest = [f for f in single if f not in set(picked)]
        picked += rng.sample(rest, min(len(rest), limit - len(picked)))
    return sorted(picked)


def run_real_suite(lm: LoadedModel, request: EvalRequest, out: EvalOutput, sae, stats,
                   embedder, log: Log) -> None:
    from selfexplain.explain import SelfExplainer, explain_sae_features

    embedder = embedder or real.Embedder()
    features = sample_features(stats, request.limit, request.seed, request.split)
    if len(features) < 2:
        raise InputError("the SAE's feature stats have fewer than 2 live features")
    n_single = int(stats.filter(pl.col("feature").is_in(features))["single_token"].sum())
    out.notes.append(
        f"real: {len(features)} live {request.split.upper()} features (feature ids "
        f"{'even' if request.split == 'dev' else 'odd'}) of SAE {sae.release}/{sae.sae_id} "
        f"(seeded sample, stratified: {n_single} single-token); token recovery on the single-token ones; embedding "
        "AUROC = the label's MiniLM similarity to its own top contexts vs a deranged feature's"
    )
    frames = []
    flag_frames = []
    unit = None
    for method in (m for m in request.methods if m in SELF_METHODS):
        began = time.perf_counter()
        config = _config(method, request)
        log(f"real: {method} on {len(features)} features")
        explainer = SelfExplainer(lm, config)
        unit = explainer.unit if config.scale_unit == "relative" else unit
        results, _skipped = explain_sae_features(
            lm, sae, features, config, explainer=explainer,
            progress=_progress(log, f"real: {method}", len(features)))
        rows = real.score_real(method, stats=stats, embedder=embedder, seed=request.seed,
                               **real.selfexplain_inputs(results))
        frames.append(rows)
        min_scale = explainer.min_scale
        for strategy in request.rerank:  # the same samples under other selection strategies
            frames.append(real.score_real(
                f"{method}:{strategy}", stats=stats, embedder=embedder, seed=request.seed,
                **real.reranked_inputs(results, strategy, min_scale=min_scale,
                                       entropy_metric=config.entropy_metric,
                                       top_n=config.top_n,
                                       token_recovery=config.token_recovery)))
        out.settings[method] = config.settings_hash()
        _timed(out, f"real/{method}", began)
        verdict = rows.with_columns((pl.col("sim_own") > pl.col("sim_other")).alias("embed_win"))
        flag_frames.append(thresholds.engine_flag_summary(
            verdict, outcome="embed_win", split="real", suite="failure_flag_real"))
        score, named = _flag_basis(config)
        layer = sae.resid_layer if sae.resid_layer is not None else config.injection_layer
        threshold = _null_threshold(out, request, explainer, method, layer, log)
        if threshold is not None:
            named[_null_name(request)] = threshold
            out.observed[f"meaning ({method}) SAE features"] = rows[score].to_list()
        flag_frames.append(thresholds.flag_summary(verdict, named, outcome="embed_win",
                                                   split="real", score=score).with_columns(
            pl.lit("failure_flag_real").alias("suite")))
        flag_frames.append(thresholds.selfsim_aurocs(
            verdict, out.null.get(f"meaning ({method})", []), method=method, outcome="embed_win",
            split="real", suite="failure_flag_real", score=score))
    # the baselines read the same directions as the default method (typical inputs when the SAE
    # has statistics): every method on equal inputs
    directions, kept, _ = sae.unit_directions(features, _config("default", request).direction)
    layer = _config("default", request).injection_layer
    for method in (m for m in request.methods if m in BASELINES):
        began = time.perf_counter()
        log(f"real: {method}")
        if method == "maxact":
            token_lists = baselines.maxact_tokens(stats, kept, k=request.baseline_k)
            recovered = None  # max-activating tokens are the ground truth of token recovery
        else:
            token_lists = _baseline_labels(lm, method, directions, layer, request, unit)
            recovered = [ls[0] if ls else None for ls in token_lists]
        labels = [", ".join(ls[:5]) if ls else None for ls in token_lists]
        frames.append(real.score_real(method, kept, labels, recovered, stats, embedder,
                                      seed=request.seed, top_labels=token_lists))
        _timed(out, f"real/{method}", began)
    items = heldout_detection(pl.concat(frames), sae, embedder, request.seed, log)
    out.items["real"] = items
    out.summaries.append(real.summarise_real(items, split=f"real-{request.split}"))
    out.summaries.extend(flag_frames)


CONTROL = "control:other-label"
"""Each latent scored with another latent's default label: the floor of the held-out scores."""


def heldout_detection(items: pl.DataFrame, sae, embedder, seed: int, log: Log) -> pl.DataFrame:
    """`items` with every label's held-out detection AUROC (random and hard negatives) and the
    control rows; unchanged when the SAE's statistics hold no held-out examples."""
    from selfexplain.scoring import scorer_for
    from selfexplain.statstore import heldout_dir

    if heldout_dir(sae) is None:
        log("real: no held-out examples for this SAE (selfexplain collect keeps them): "
            "held-out detection not scored")
        return items
    began = time.perf_counter()
    scorer = scorer_for(sae.stats_dir, sae.decoder, embedder)
    base = items.filter(pl.col("method") == "default").sort("feature")
    if base.height >= 2:
        features = base["feature"].to_list()
        partner = dict(zip(features, real.derangement(features, seed)))
        label_of = dict(zip(features, base["label"].to_list()))
        control = base.with_columns(
            pl.lit(CONTROL).alias("method"),
            pl.col("feature").replace_strict(partner, return_dtype=pl.Int64).alias("other_feature"),
            pl.col("feature").replace_strict(partner).replace_strict(
                label_of, return_dtype=pl.String).alias("label"),
            *(pl.lit(None, dtype=items.schema[c]).alias(c) for c in (
                "recovered", "recovered_exact", "label_names_token", "sim_own", "sim_other")))
        items = pl.concat([items, control.select(items.columns)])
    scores = scorer.score(items["feature"].to_list(), items["label"].to_list())
    log(f"real: held-out detection of {items.height} labels in {time.perf_counter() - began:.0f} s")
    return items.with_columns(scores["detection_auroc"], scores["detection_auroc_hard"])


# -- warehouse rows ----------------------------------------------------------------------------

EVAL_RESULT_SCHEMA = {
    "eval_id": pl.String, "suite": pl.String, "release": pl.String, "sae_id": pl.String,
    "feature": pl.Int32, "method": pl.String, "metric": pl.String, "value": pl.Float64,
    "name": pl.String, "detail_json": pl.String, "model_id": pl.String,
    "settings_hash": pl.String, "run_id": pl.String, "created_at": pl.Datetime("us", "UTC"),
}
_ITEM_METRICS = {
    "planted": ("hit_top1", "hit_top3", "hit_any", "recovered_exact", "recovered_match",
                "failed", "max_selfsim", "max_roundtrip"),
    "scale_selection": ("top3_exact", "top3_near", "best_scale"),
    "real": ("recovered_exact", "label_names_token", "sim_own", "sim_other", "failed",
             "max_selfsim", "max_roundtrip", "detection_auroc", "detection_auroc_hard",
             "judge_detection", "judge_detection_hard", "judge_fuzzing"),
    "planted_embedding": ("sim_own", "sim_other"),
    "judge": ("judge_match",),
}
_DETAIL = {
    "planted": ("labels", "recovered", "matched", "kind", "pos"),
    "scale_selection": ("chosen_scales", "eligible"),
    "real": ("label", "recovered", "top_token", "single_token", "other_feature"),
    "planted_embedding": (),
    "judge": ("response",),
}


def eval_result_rows(output: EvalOutput, *, eval_id: str, model_id: str, sae_release: str = "",
                     sae_id: str = "", created_at: dt.datetime | None = None) -> pl.DataFrame:
    """Per item and metric, the warehouse's `eval_result` rows (null values dropped)."""
    created_at = created_at or dt.datetime.now(dt.timezone.utc)
    split = output.request.split
    records = []
    for suite, items in output.items.items():
        if suite not in _ITEM_METRICS:
            continue
        for row in items.iter_rows(named=True):
            method = row["method"]
            if suite in ("real", "judge"):
                release, set_id = sae_release, sae_id
            else:
                kind = {"word": "words", "class": "classes"}.get(row.get("kind") or "word", "words")
                release, set_id = "planted", f"{kind}_{split}"
            detail = {k: row[k] for k in _DETAIL[suite] if k in row}
            for metric in _ITEM_METRICS[suite]:
                value = row.get(metric)
                if value is None:
                    continue
                records.append(dict(
                    eval_id=eval_id, suite=suite, release=release, sae_id=set_id,
                    feature=int(row["feature"]), method=method, metric=metric,
                    value=float(value), name=row.get("name"),
                    detail_json=json.dumps(detail, default=str), model_id=model_id,
                    settings_hash=output.settings.get(method.split(":")[0]), run_id=None,
                    created_at=created_at,
                ))
    return pl.DataFrame(records, schema=EVAL_RESULT_SCHEMA, orient="row")
