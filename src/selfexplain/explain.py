"""The self-explanation engine: sweep, score, sample, select, flag (METHOD.md sections 3-7).

`SelfExplainer` holds what is shared by every feature of a run (prompts, the prefix KV caches, the
scale-0 and mean-embedding baselines, the absolute scale grid) and explains directions in chunks:

1. metric pass: one batched prompt pass over (features x scales) rows -> self-similarity, entropy,
   cross-entropy, composite per scale;
2. generation: sample explanations at the configured scales (faithful) or at the best few metric
   scales (default), in batches, with the prompt's KV cache;
3. selection: rank candidates with the configured strategy, keep the top n;
4. flags: failure (max self-similarity under the threshold), recovered token (repeat prompt) and its
   reliability.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from selfexplain.config import ExplainConfig
from selfexplain.errors import InputError
from selfexplain.forward import PrefixCache, prompt_pass, residual_norm
from selfexplain.generate import row_seed, sample_continuations
from selfexplain.metrics import composite, cross_entropy, entropy, nearest_scale_index, self_similarity
from selfexplain.models import LoadedModel
from selfexplain.prompts import MEANING, REPEAT, Prompt, build_prompt
from selfexplain.results import Candidate, FeatureExplanation, SkippedFeature, Sweep
from selfexplain.saes import SaeDirections
from selfexplain.selection import STRATEGIES, SweepScores, order

NORM_TEXTS = (
    "The history of the city goes back to a small market town on the river.",
    "She opened the window, looked at the rain, and decided to stay at home.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "def add(a, b):\n    return a + b",
)
"""Neutral text on which the typical residual norm at the injection layer is measured."""

Progress = Callable[[int], None]


@dataclass
class _PromptState:
    prompt: Prompt
    prefix: PrefixCache
    probe_zero: Tensor  # (d_model,)
    logits_zero: Tensor  # (vocab,)
    baseline_logits: Tensor  # (scales, vocab) mean-embedding baseline at each metric scale


class SelfExplainer:
    """Explains directions with one model and one config; reuse it across chunks and shards."""

    def __init__(self, lm: LoadedModel, config: ExplainConfig) -> None:
        self.lm = lm
        self.config = config
        self.injection_layer = config.injection_layer
        self.probe_layer = config.probe_layer or lm.default_probe_layer()
        if self.injection_layer >= lm.n_layers:
            raise InputError(
                f"injection layer {self.injection_layer} is beyond the model's {lm.n_layers} blocks"
            )
        if not self.injection_layer < self.probe_layer < lm.n_layers:
            raise InputError(
                f"probe layer {self.probe_layer} must lie between the injection layer "
                f"{self.injection_layer} and the model's {lm.n_layers} blocks"
            )
        self.unit = 1.0
        if config.scale_unit == "relative":
            self.unit = residual_norm(lm, self.injection_layer, list(NORM_TEXTS))
        self.scales = torch.tensor(config.metric_scales) * self.unit  # (scales,) absolute
        self.min_scale = config.min_scale * self.unit
        self.generation_scales = (
            None if config.generation_scales is None
            else torch.tensor(config.generation_scales) * self.unit
        )
        kinds = [MEANING, REPEAT] if config.recover_token else [MEANING]
        self.states = {kind: self._prepare(kind) for kind in kinds}

    def _prepare(self, kind: str) -> _PromptState:
        """Everything about a prompt that does not depend on the direction: computed once."""
        lm = self.lm
        prompt = build_prompt(lm.tokenizer, lm.family, kind, self.config.placeholder)
        prefix = PrefixCache(lm, prompt)
        embedding = lm.model.get_input_embeddings().weight.float().mean(dim=0)  # (d_model,)
        mean_direction = embedding / embedding.norm()
        vectors = torch.cat([torch.zeros(1, lm.d_model), self.scales[:, None] * mean_direction])
        passes = [
            prompt_pass(lm, prompt, prefix, chunk, self.injection_layer, self.probe_layer)
            for chunk in vectors.split(self.config.batch_rows)
        ]
        probe = torch.cat([p.probe for p in passes])  # (1 + scales, d_model)
        logits = torch.cat([p.logits for p in passes])  # (1 + scales, vocab)
        return _PromptState(prompt, prefix, probe[0], logits[0], logits[1:])

    def explain(self, directions: Tensor, features: list[int], names: list[str] | None = None,
                progress: Progress | None = None) -> list[FeatureExplanation]:
        """Explain unit `directions` (n, d_model); `features` are their ids (used in seeds)."""
        if directions.ndim != 2 or directions.shape[1] != self.lm.d_model:
            raise InputError(
                f"directions have shape {tuple(directions.shape)}; expected (n, {self.lm.d_model})"
            )
        if len(features) != directions.shape[0]:
            raise InputError("one feature id per direction is required")
        names = names or [f"feature {f}" for f in features]
        directions = directions.float() / directions.float().norm(dim=-1, keepdim=True)
        per_chunk = max(1, self.config.batch_rows // len(self.scales))
        out: list[FeatureExplanation] = []
        for start in range(0, len(features), per_chunk):
            stop = start + per_chunk
            began = time.perf_counter()
            chunk = self._explain_chunk(directions[start:stop], features[start:stop],
                                        names[start:stop])
            seconds = (time.perf_counter() - began) / len(chunk)
            out.extend(_with_seconds(item, seconds) for item in chunk)
            if progress is not None:
                progress(len(chunk))
        return out

    def _explain_chunk(self, directions: Tensor, features: list[int],
                       names: list[str]) -> list[FeatureExplanation]:
        per_prompt = {kind: self._run_prompt(kind, directions, features) for kind in self.states}
        results = []
        for i, (feature, name) in enumerate(zip(features, names)):
            sweeps = [per_prompt[kind][0][i] for kind in per_prompt]
            candidates = [c for kind in per_prompt for c in per_prompt[kind][1][i]]
            results.append(self._assemble(feature, name, sweeps, candidates))
        return results

    def _run_prompt(self, kind: str, directions: Tensor,
                    features: list[int]) -> tuple[list[Sweep], list[list[Candidate]]]:
        """Metric pass, generation and ranking of one prompt for a chunk of features."""
        config, state = self.config, self.states[kind]
        n_features, n_scales = directions.shape[0], len(self.scales)
        # (features * scales, d_model): row f * n_scales + s holds scale s times direction f
        vectors = (self.scales[None, :, None] * directions[:, None, :]).reshape(-1, self.lm.d_model)
        passes = [
            prompt_pass(self.lm, state.prompt, state.prefix, chunk, self.injection_layer,
                        self.probe_layer)
            for chunk in vectors.split(config.batch_rows)
        ]
        probe = torch.cat([p.probe for p in passes]).view(n_features, n_scales, -1)
        logits = torch.cat([p.logits for p in passes]).view(n_features, n_scales, -1)
        selfsim = self_similarity(probe, state.probe_zero, directions)  # (features, scales)
        ent = entropy(logits) - entropy(state.logits_zero)  # (features, scales)
        xent = cross_entropy(logits, state.baseline_logits[None])  # (features, scales)
        scored = ent if config.entropy_metric == "entropy" else xent
        comp = composite(selfsim, scored, self.scales, config.alpha, self.min_scale)
        plan = self._generation_plan(comp)  # per feature: list of (scale, sample)
        texts = self._sample(kind, state, directions, features, plan)
        sweeps: list[Sweep] = []
        candidates: list[list[Candidate]] = []
        strategy = STRATEGIES[config.selection]
        for f in range(n_features):
            sweep = SweepScores(self.scales, selfsim[f], scored[f], comp[f], self.min_scale)
            sweeps.append(Sweep(kind, self.scales.tolist(), selfsim[f].tolist(), ent[f].tolist(),
                                xent[f].tolist(), comp[f].tolist()))
            scales = torch.tensor([scale for scale, _ in plan[f]])
            grid_index = nearest_scale_index(self.scales, scales).tolist()
            ranked = strategy(grid_index, texts[f], sweep)
            # An empty answer explains nothing: rank every non-empty one above it.
            keyed = [s if texts[f][i] else s - 1e6 for i, s in enumerate(ranked.score)]
            ranking = order(keyed)
            rank_of = {index: rank for rank, index in enumerate(ranking)}
            candidates.append([
                Candidate(
                    prompt=kind, text=texts[f][i], scale=float(plan[f][i][0]),
                    sample=plan[f][i][1], composite=float(comp[f, grid_index[i]]),
                    score=float(ranked.score[i]), rank=rank_of[i],
                    chosen=rank_of[i] < config.top_n and bool(texts[f][i]),
                    extra={"selfsim": float(selfsim[f, grid_index[i]]),
                           "entropy": float(ent[f, grid_index[i]]), **ranked.extra[i]},
                )
                for i in range(len(plan[f]))
            ])
        return sweeps, candidates

    def _generation_plan(self, comp: Tensor) -> list[list[tuple[float, int]]]:
        """Per feature, the (absolute scale, sample index) pairs to sample at."""
        config = self.config
        samples = range(config.samples_per_scale)
        if self.generation_scales is not None:
            shared = [(float(s), k) for s in self.generation_scales for k in samples]
            return [shared for _ in range(comp.shape[0])]
        eligible = self.scales >= self.min_scale
        plans = []
        for row in comp:
            masked = torch.where(eligible, row, torch.full_like(row, -torch.inf))
            best = masked.topk(min(config.top_scales, int(eligible.sum()))).indices.sort().values
            plans.append([(float(self.scales[i]), k) for i in best.tolist() for k in samples])
        return plans

    def _sample(self, kind: str, state: _PromptState, directions: Tensor, features: list[int],
                plan: list[list[tuple[float, int]]]) -> list[list[str]]:
        """Sample every planned (feature, scale, sample) row in batches; texts per feature."""
        config = self.config
        rows = [(f, scale, k) for f in range(len(features)) for scale, k in plan[f]]
        texts: list[list[str]] = [[] for _ in features]
        for start in range(0, len(rows), config.batch_rows):
            batch = rows[start : start + config.batch_rows]
            vectors = torch.stack([scale * directions[f] for f, scale, _ in batch])
            seeds = [row_seed(config.seed, kind, features[f], round(scale, 4), k)
                     for f, scale, k in batch]
            result = prompt_pass(self.lm, state.prompt, state.prefix, vectors,
                                 self.injection_layer, self.probe_layer, keep_cache=True)
            sampled = sample_continuations(
                self.lm, result.logits, result.cache, seeds,
                max_new_tokens=config.max_new_tokens, temperature=config.temperature,
            )
            for (f, _, _), text in zip(batch, sampled):
                texts[f].append(text)
        return texts

    def _assemble(self, feature: int, name: str, sweeps: list[Sweep],
                  candidates: list[Candidate]) -> FeatureExplanation:
        config = self.config
        meaning = sorted((c for c in candidates if c.prompt == MEANING), key=lambda c: c.rank)
        repeat = sorted((c for c in candidates if c.prompt == REPEAT), key=lambda c: c.rank)
        max_selfsim = max(sweeps[0].selfsim)
        max_repeat = max(sweeps[1].selfsim) if len(sweeps) > 1 else None
        failed = max_selfsim < config.failure_threshold
        reason = (
            f"max self-similarity {max_selfsim:.4f} < threshold {config.failure_threshold:g}"
            if failed else None
        )
        recovered = next((c.text for c in repeat if c.text), None)
        return FeatureExplanation(
            feature=feature,
            name=name,
            explanations=[c for c in meaning if c.chosen][: config.top_n],
            recovered_token=recovered,
            recovered_reliable=recovered is not None and max_repeat is not None
            and max_repeat >= config.failure_threshold,
            failed=failed,
            failure_reason=reason,
            max_selfsim=max_selfsim,
            max_selfsim_repeat=max_repeat,
            candidates=candidates,
            sweeps=sweeps,
        )


def _with_seconds(item: FeatureExplanation, seconds: float) -> FeatureExplanation:
    from dataclasses import replace

    return replace(item, seconds=seconds)


def explain_directions(lm: LoadedModel, directions: Tensor, config: ExplainConfig, *,
                       features: list[int] | None = None, names: list[str] | None = None,
                       progress: Progress | None = None) -> list[FeatureExplanation]:
    """Explain arbitrary directions (n, d_model): steering vectors, probes, planted words."""
    features = features if features is not None else list(range(directions.shape[0]))
    return SelfExplainer(lm, config).explain(directions, features, names, progress)


def explain_sae_features(lm: LoadedModel, sae: SaeDirections, features: list[int],
                         config: ExplainConfig, *, progress: Progress | None = None,
                         explainer: SelfExplainer | None = None,
                         ) -> tuple[list[FeatureExplanation], list[SkippedFeature]]:
    """Explain SAE latents by their unit decoder rows; NaN/zero rows are skipped with a reason."""
    sae.check_fits(lm.d_model, lm.n_layers)
    directions, kept, skipped = sae.unit_directions(features)
    explainer = explainer or SelfExplainer(lm, config)
    results = explainer.explain(directions, kept, progress=progress) if kept else []
    if progress is not None and skipped:
        progress(len(skipped))
    return results, [SkippedFeature(f, reason) for f, reason in skipped.items()]
