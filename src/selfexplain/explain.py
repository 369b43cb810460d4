"""The self-explanation engine: sweep, score, sample, select, flag (METHOD.md sections 3-7).

`SelfExplainer` holds what is shared by every feature of a run (prompts, the prefix KV caches, the
scale-0 and mean-embedding baselines, the absolute scale grid) and explains directions in chunks:

1. metric pass: one batched prompt pass over (features x scales) rows -> self-similarity, entropy,
   cross-entropy, composite per scale;
2. generation: sample explanations at the configured scales (faithful) or at the best few metric
   scales (default), in batches, with the prompt's KV cache;
3. selection: read every candidate back through the model (round trip, cheap: the first blocks
   only), rank candidates with the configured strategy, keep the top n;
4. flags: failure (max self-similarity or best round trip under the threshold), recovered token
   (the repeat prompt's answer, or the token where the round trip peaks) and its reliability.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from dataclasses import dataclass

import torch
from torch import Tensor

from selfexplain.adapter import Adapter, resolve_for_model
from selfexplain.config import ExplainConfig, check_layers
from selfexplain.errors import InputError
from selfexplain.forward import PrefixCache, prompt_pass, residual_norm
from selfexplain.generate import row_seed, sample_continuations
from selfexplain.metrics import composite, cross_entropy, entropy, nearest_scale_index, self_similarity
from selfexplain.models import LoadedModel
from selfexplain.prompts import MEANING, REPEAT, Prompt, build_prompt
from selfexplain.roundtrip import RoundTrip
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
class _PromptResult:
    sweeps: list[Sweep]  # per feature
    candidates: list[list[Candidate]]  # per feature
    plan: list[list[int]]  # per feature: metric-grid indices sampled at

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
        self.adapter: Adapter | None = resolve_for_model(config.adapter, lm, config.injection_layer)
        """What is injected is `adapter.apply(scale, direction)` (None: `scale * direction`)."""
        if lm.dtype != config.torch_dtype:
            raise InputError(f"the model is loaded in {str(lm.dtype).removeprefix('torch.')} but the "
                             f"configuration asks for {config.precision}: load it with "
                             f"load_model(..., dtype=config.torch_dtype)")
        self.injection_layer = config.injection_layer
        self.batch_rows = config.batch_rows
        """Rows per prompt pass: the configured number on the CPU; on CUDA, as many as half the
        free memory holds (never fewer than configured)."""
        if lm.device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(lm.device)
            fitted = fit_batch_rows(lm, config.max_new_tokens + 64, free // 2)
            self.batch_rows = max(config.batch_rows, fitted)
        self.probe_layer = config.probe_layer or lm.default_probe_layer()
        check_layers(self.injection_layer, self.probe_layer, lm.n_layers)
        self.unit = 1.0
        if config.scale_unit == "relative":
            self.unit = residual_norm(lm, self.injection_layer, list(NORM_TEXTS))
        self.scales = torch.tensor(config.metric_scales) * self.unit  # (scales,) absolute
        self.min_scale = config.min_scale * self.unit
        self.generation_scales = (
            None if config.generation_scales is None
            else torch.tensor(config.generation_scales) * self.unit
        )
        kinds = [MEANING, REPEAT] if config.recover_token and config.repeat_scales else [MEANING]
        began = time.perf_counter()
        self.states = {kind: self._prepare(kind) for kind in kinds}
        self.roundtrip = RoundTrip(lm, self.injection_layer, list(NORM_TEXTS))
        self.timings: dict[str, float] = {"prefill": time.perf_counter() - began,
                                          "metrics": 0.0, "generation": 0.0, "selection": 0.0}
        """Seconds spent per stage (prefill = prefix caches and shared baselines), for benchmarks."""

    def _prepare(self, kind: str) -> _PromptState:
        """Everything about a prompt that does not depend on the direction: computed once."""
        lm = self.lm
        prompt = build_prompt(lm.tokenizer, lm.family, kind, self.config.placeholder)
        window = getattr(lm.model.config, "sliding_window", None)
        needed = len(prompt.input_ids) + self._budget(kind)
        if isinstance(window, int) and 0 < window < needed:
            # a cached prefix continued past a sliding window is no longer exact (measured on a
            # tiny Gemma 3 with window 16: self-similarity off by 2e-4 against a full forward)
            raise InputError(f"the model's sliding attention window ({window} tokens) is shorter "
                             f"than the prompt plus answer ({needed}): lower --max-new-tokens")
        prefix = PrefixCache(lm, prompt)
        embedding = lm.model.get_input_embeddings().weight.float().mean(dim=0).cpu()  # (d_model,)
        mean_direction = embedding / embedding.norm()
        scales = torch.cat([torch.zeros(1), self.scales])  # (1 + scales,)
        vectors = self._injected(scales, mean_direction.expand(len(scales), -1))
        passes = [
            prompt_pass(lm, prompt, prefix, chunk, self.injection_layer, self.probe_layer)
            for chunk in vectors.split(self.batch_rows)
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
        per_chunk = max(1, self.batch_rows // len(self.scales))
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
        meaning = self._explain_prompt(MEANING, directions, features, plan=None)
        repeat = (
            self._explain_prompt(REPEAT, directions, features, plan=meaning.plan)
            if REPEAT in self.states else None
        )
        results = []
        for f, (feature, name) in enumerate(zip(features, names)):
            sweeps = [meaning.sweeps[f]] + ([repeat.sweeps[f]] if repeat else [])
            candidates = meaning.candidates[f] + (repeat.candidates[f] if repeat else [])
            results.append(self._assemble(feature, name, sweeps, candidates))
        return results

    def _explain_prompt(self, kind: str, directions: Tensor, features: list[int],
                        plan: list[list[int]] | None) -> "_PromptResult":
        """Metric pass, sampling and ranking of one prompt for a chunk of features.

        Faithful mode (`generation_scales` set): the full metric grid, then a separate sampling
        pass at every generation scale, as the post did. Default mode: sampling reuses the metric
        pass's KV cache and first-token logits at the best `top_scales` scales; the repeat prompt
        runs only at the scales the meaning prompt chose (`plan`), not over the whole grid.
        """
        config, state = self.config, self.states[kind]
        n_features, d_model = directions.shape
        faithful = self.generation_scales is not None
        if plan is None or faithful:
            grid = [list(range(len(self.scales))) for _ in range(n_features)]
        else:
            grid = plan
        width = len(grid[0])
        index = torch.tensor(grid)  # (features, width) indices into the metric grid
        scales = self.scales[index]  # (features, width)
        vectors = self._injected(scales.reshape(-1),
                                 directions[:, None, :].expand(-1, width, -1).reshape(-1, d_model))
        clock = time.perf_counter()
        out, probe, logits, position = self._metric_pass(state, vectors, scales.reshape(-1) == 0,
                                                         faithful)
        probe = probe.view(n_features, width, d_model)
        logits = logits.view(n_features, width, -1)
        selfsim = self_similarity(probe, state.probe_zero, directions)  # (features, width)
        ent = entropy(logits) - entropy(state.logits_zero)  # (features, width)
        xent = cross_entropy(logits, state.baseline_logits[index])  # (features, width)
        scored = ent if config.entropy_metric == "entropy" else xent
        if width == len(self.scales):
            comp = composite(selfsim, scored, self.scales, config.alpha, self.min_scale)
        else:  # a partial grid: rank by the meaning prompt's composite at the same scales
            comp = self._last_meaning_composite.gather(1, index)
        if kind == MEANING:
            self._last_meaning_composite = comp
        samples = config.samples_per_scale
        clock = self._tick("metrics", clock)
        if faithful:
            gen_scales = self.generation_scales.tolist()
            rows = [(f, s, k) for f in range(n_features) for s in gen_scales for k in range(samples)]
            texts = self._sample_fresh(kind, state, directions, features, rows)
            row_grid = nearest_scale_index(self.scales, torch.tensor([s for _, s, _ in rows]))
            chosen_index = [list(range(len(self.scales))) for _ in range(n_features)]
        else:
            chosen_index = self._best_scales(comp) if plan is None else [
                list(range(width)) for _ in range(n_features)]
            rows = [(f, float(scales[f, j]), k) for f in range(n_features)
                    for j in chosen_index[f] for k in range(samples)]
            cache_rows = [f * width + j for f in range(n_features) for j in chosen_index[f]
                          for _ in range(samples)]
            texts = self._sample_cached(kind, out, position[torch.tensor(cache_rows)], features,
                                        rows)
            row_grid = torch.tensor([int(index[f, j]) for f in range(n_features)
                                     for j in chosen_index[f] for _ in range(samples)])
        clock = self._tick("generation", clock)
        # every candidate's round trip is stored (extra["roundtrip"]), whatever ranks it
        peaks = self.roundtrip.peaks(texts, directions[[f for f, _, _ in rows]])
        roundtrip = [peak.score for peak in peaks]
        result = _PromptResult(sweeps=[], candidates=[], plan=[])
        strategy = STRATEGIES[config.selection]
        if config.selection == "consensus":
            strategy = partial(strategy, weight=config.consensus_weight)
        elif config.selection == "roundtrip":
            strategy = partial(strategy, weight=config.roundtrip_weight,
                               consensus_weight=config.consensus_weight)
        by_feature: list[list[int]] = [[] for _ in range(n_features)]
        for r, (f, _, _) in enumerate(rows):
            by_feature[f].append(r)
        for f in range(n_features):
            own = by_feature[f]
            # positions of this feature's samples within its own (partial) grid
            local = [int((index[f] == row_grid[r]).nonzero()[0]) for r in own]
            sweep = SweepScores(scales[f], selfsim[f], scored[f], comp[f], self.min_scale)
            feature_texts = [texts[r] for r in own]
            ranked = strategy(local, feature_texts, sweep, roundtrip=[roundtrip[r] for r in own])
            keyed = [s if feature_texts[i] else s - 1e6 for i, s in enumerate(ranked.score)]
            ranking = order(keyed)
            rank_of = {i: rank for rank, i in enumerate(ranking)}
            chosen = _distinct_top(ranking, feature_texts, config.top_n)
            result.sweeps.append(Sweep(kind, scales[f].tolist(), selfsim[f].tolist(),
                                       ent[f].tolist(), xent[f].tolist(), comp[f].tolist()))
            result.candidates.append([
                Candidate(
                    prompt=kind, text=feature_texts[i], scale=rows[r][1], sample=rows[r][2],
                    composite=float(comp[f, local[i]]), score=float(ranked.score[i]),
                    rank=rank_of[i], chosen=i in chosen,
                    extra={"selfsim": float(selfsim[f, local[i]]),
                           "entropy": float(ent[f, local[i]]), "roundtrip": roundtrip[r],
                           **ranked.extra[i]},
                    peak_token=peaks[r].token,
                )
                for i, r in enumerate(own)
            ])
            # the repeat prompt runs at the best `repeat_scales` of these, by composite
            best = sorted(chosen_index[f], key=lambda j: -float(comp[f, j]))[: config.repeat_scales]
            result.plan.append(sorted(int(index[f, j]) for j in best))
        self._tick("selection", clock)
        return result

    def _metric_pass(self, state: _PromptState, vectors: Tensor, zero: Tensor, faithful: bool):
        """The prompt pass of every (feature x scale) row: (pass, probe (rows, d_model), logits
        (rows, vocab), position (rows,)). Rows at scale 0 (`zero`, (rows,)) inject the same vector
        for every feature (nothing, or the adapter's bias), so the prompt's own scale-0 pass
        stands in for them (a ninth of the default grid) whenever no sample is drawn
        from their cache: in faithful mode (fresh passes) or when scales under `min_scale` are
        never sampled. `pass` holds only the rows that ran; `position` maps a row to its row in
        `pass` (-1: skipped)."""
        skip = zero if (faithful or self.min_scale > 0) else torch.zeros_like(zero)
        ran = (~skip).nonzero().squeeze(-1)  # (ran,)
        out = prompt_pass(self.lm, state.prompt, state.prefix, vectors[ran], self.injection_layer,
                          self.probe_layer, keep_cache=not faithful,
                          answer_tokens=self._budget(state.prompt.kind))
        probe = state.probe_zero.expand(len(vectors), -1).clone()
        probe[ran] = out.probe
        logits = state.logits_zero.expand(len(vectors), -1).clone()
        logits[ran] = out.logits
        position = torch.full((len(vectors),), -1, dtype=torch.long)
        position[ran] = torch.arange(len(ran))
        return out, probe, logits, position

    def _injected(self, scales: Tensor, directions: Tensor) -> Tensor:
        """What is written at the placeholders: scales (n,) absolute, directions (n, d_model)
        unit -> (n, d_model); `scale * direction`, or the adapter's affine map of it."""
        if self.adapter is None:
            return scales[:, None] * directions
        return self.adapter.apply(scales, directions)

    def _budget(self, kind: str) -> int:
        """New tokens per sample of this prompt."""
        if kind == REPEAT and self.config.repeat_max_new_tokens is not None:
            return self.config.repeat_max_new_tokens
        return self.config.max_new_tokens

    def _tick(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[stage] += now - since
        return now

    def _best_scales(self, comp: Tensor) -> list[list[int]]:
        """Per feature, the `top_scales` eligible grid indices with the highest composite."""
        eligible = self.scales >= self.min_scale  # (scales,)
        count = int(eligible.sum())
        count = count if self.config.top_scales is None else min(self.config.top_scales, count)
        masked = torch.where(eligible[None, :], comp, torch.full_like(comp, -torch.inf))
        return masked.topk(count, dim=-1).indices.sort(dim=-1).values.tolist()

    def _seeds(self, kind: str, features: list[int], rows: list[tuple[int, float, int]]) -> list[int]:
        return [row_seed(self.config.seed, kind, features[f], round(scale, 4), k)
                for f, scale, k in rows]

    def _sample_cached(self, kind: str, out, select: Tensor, features: list[int],
                       rows: list[tuple[int, float, int]]) -> list[str]:
        """Sample from the metric pass's own cache (`select`: its rows, one per sample): no second
        prompt pass."""
        assert bool((select >= 0).all()), "a sampled row was skipped in the metric pass"
        out.cache.batch_select_indices(select.to(self.lm.device))
        return sample_continuations(
            self.lm, out.logits, out.cache, self._seeds(kind, features, rows),
            max_new_tokens=self._budget(kind), temperature=self.config.temperature,
            first_rows=select,
        )

    def _sample_fresh(self, kind: str, state: _PromptState, directions: Tensor,
                      features: list[int], rows: list[tuple[int, float, int]]) -> list[str]:
        """Faithful mode: a new injected prompt pass per batch of (feature, scale, sample) rows."""
        config = self.config
        texts: list[str] = []
        for start in range(0, len(rows), self.batch_rows):
            batch = rows[start : start + self.batch_rows]
            vectors = self._injected(torch.tensor([scale for _, scale, _ in batch]),
                                     torch.stack([directions[f] for f, _, _ in batch]))
            result = prompt_pass(self.lm, state.prompt, state.prefix, vectors,
                                 self.injection_layer, self.probe_layer, keep_cache=True,
                                 answer_tokens=self._budget(kind))
            texts.extend(sample_continuations(
                self.lm, result.logits, result.cache, self._seeds(kind, features, batch),
                max_new_tokens=self._budget(kind), temperature=config.temperature,
            ))
        return texts

    def _recover(self, candidates: list[Candidate], repeat: list[Candidate],
                 ) -> tuple[str | None, float]:
        """The literal token by the configured rule, and the round trip of the answer it came
        from (-inf when none)."""
        config = self.config
        if not config.recover_token:
            return None, -float("inf")
        if config.token_recovery == "peak":
            best = best_reading_answer(candidates)
            return (best.peak_token, best.extra["roundtrip"]) if best else (None, -float("inf"))
        recovered = recover_token(repeat, majority=config.selection != "composite")
        return recovered, max((c.extra["roundtrip"] for c in repeat if c.text == recovered),
                              default=-float("inf"))

    def _assemble(self, feature: int, name: str, sweeps: list[Sweep],
                  candidates: list[Candidate]) -> FeatureExplanation:
        config = self.config
        meaning = sorted((c for c in candidates if c.prompt == MEANING), key=lambda c: c.rank)
        repeat = sorted((c for c in candidates if c.prompt == REPEAT), key=lambda c: c.rank)
        max_selfsim = max(sweeps[0].selfsim)
        max_repeat = max(sweeps[1].selfsim) if len(sweeps) > 1 else None
        max_roundtrip = max((c.extra["roundtrip"] for c in meaning if c.text), default=None)
        if config.failure_metric == "selfsim":
            failed = max_selfsim < config.failure_threshold
            reason = f"max self-similarity {max_selfsim:.4f} < threshold {config.failure_threshold:g}"
        elif max_roundtrip is None:
            failed, reason = True, "every explanation is empty"
        else:
            failed = max_roundtrip < config.failure_threshold
            reason = (f"no explanation reads back as the direction: best round trip "
                      f"{max_roundtrip:.3f} < threshold {config.failure_threshold:g}")
        recovered, readback = self._recover(candidates, repeat)
        if config.failure_metric == "selfsim":  # the post: the repeat prompt's own curve
            reliable = recovered is not None and max_repeat is not None and (
                max_repeat >= config.failure_threshold)
        else:  # the round trip of the recovered answer itself
            reliable = recovered is not None and readback >= config.failure_threshold
        return FeatureExplanation(
            feature=feature,
            name=name,
            explanations=[c for c in meaning if c.chosen][: config.top_n],
            recovered_token=recovered,
            recovered_reliable=reliable,
            failed=failed,
            failure_reason=reason if failed else None,
            max_selfsim=max_selfsim,
            max_selfsim_repeat=max_repeat,
            candidates=candidates,
            sweeps=sweeps,
            max_roundtrip=max_roundtrip,
        )


def _distinct_top(ranking: list[int], texts: list[str], top_n: int) -> set[int]:
    """The first `top_n` candidates in ranking order with distinct, non-empty texts.

    Three copies of one answer would waste two of the three label slots.
    """
    seen: set[str] = set()
    chosen: set[int] = set()
    for i in ranking:
        key = label_key(texts[i])
        if key and key not in seen and len(chosen) < top_n:
            seen.add(key)
            chosen.add(i)
    return chosen


def label_key(text: str) -> str:
    """What two labels must differ in to both be kept: case, outer punctuation and spacing do not
    count; a label of punctuation only (`!!`) has an empty key and is never chosen."""
    return " ".join(text.lower().strip(" .,;:!?'").split())


def distinct_top(texts: Sequence[str], top_n: int) -> list[str]:
    """The labels the engine keeps from `texts` in ranking order (`_distinct_top`'s rule)."""
    chosen = _distinct_top(list(range(len(texts))), list(texts), top_n)
    return [text for i, text in enumerate(texts) if i in chosen]


def recover_token(repeat: list[Candidate], *, majority: bool) -> str | None:
    """The literal token from the repeat prompt's candidates (sorted by rank).

    The post takes the top-ranked answer. With `majority`, the answer given most often wins
    (ties go to the better rank): copying a token is a yes/no matter, so agreement between samples
    is a stronger signal than the scale metrics.
    """
    answers = [c.text for c in repeat if c.text]
    if not answers:
        return None
    if not majority:
        return answers[0]
    counts: dict[str, int] = {}
    for answer in answers:
        counts[answer] = counts.get(answer, 0) + 1
    return max(answers, key=lambda a: (counts[a], -answers.index(a)))


def best_reading_answer(candidates: Sequence[Candidate]) -> Candidate | None:
    """The answer (of either prompt) whose round trip is highest: its `peak_token` is the literal
    token the `peak` rule recovers. A copied token often comes wrapped (`to order`, `S-O-M-O-`,
    `10/19/20`) and the meaning prompt often names it; the round trip finds the part that reads
    back as the direction. None when every answer is empty."""
    answered = [c for c in candidates if c.peak_token is not None and "roundtrip" in c.extra]
    return max(answered, key=lambda c: c.extra["roundtrip"], default=None)


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
    """Explain SAE latents by their unit decoder rows (or typical inputs, `config.direction`);
    NaN/zero rows are skipped with a reason."""
    sae.check_fits(lm.d_model, lm.n_layers)
    directions, kept, skipped = sae.unit_directions(features, config.direction)
    explainer = explainer or SelfExplainer(lm, config)
    results = explainer.explain(directions, kept, progress=progress) if kept else []
    if progress is not None and skipped:
        progress(len(skipped))
    return results, [SkippedFeature(f, reason) for f, reason in skipped.items()]


def fit_batch_rows(lm: LoadedModel, context_tokens: int, memory_bytes: int,
                   samples_per_row: int = 4) -> int:
    """How many prompt-pass rows fit `memory_bytes`: each row becomes about `samples_per_row`
    sampling rows (best scales x samples per feature, over the scales per feature), each holding
    a KV cache of `context_tokens` and its logits (model dtype and a float32 copy)."""
    config = lm.model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    itemsize = lm.dtype.itemsize
    kv = 2 * lm.n_layers * heads * head_dim * context_tokens * itemsize
    logits = config.vocab_size * (itemsize + 4)
    return max(1, int(memory_bytes // (samples_per_row * (kv + logits))))
