"""One frozen, validated configuration object for the explanation engine.

Built once at the edge (CLI flags, flow parameters) with `ExplainConfig.from_preset(...)` and passed
down unchanged. Defaults live here and nowhere else.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from selfexplain.errors import InputError, build_validated

if TYPE_CHECKING:
    import torch

Preset = Literal["faithful", "default"]
ScaleUnit = Literal["absolute", "relative"]
Selection = Literal["composite", "selfsim", "entropy", "consensus", "roundtrip"]
Metric = Literal["entropy", "crossent"]
FailureMetric = Literal["selfsim", "roundtrip"]
Precision = Literal["float32", "bfloat16"]
TokenRecovery = Literal["answer", "peak"]


def torch_dtype(precision: str) -> "torch.dtype":
    """The torch dtype of a precision name (`float32`, `bfloat16`)."""
    import torch

    return getattr(torch, precision)


def _check_grid(grid: tuple[float, ...], name: str) -> tuple[float, ...]:
    if len(grid) == 0:
        raise ValueError(f"{name} is empty: give at least one scale")
    if any(not math.isfinite(s) for s in grid):
        raise ValueError(f"{name} contains NaN or infinity: {list(grid)[:8]}")
    if any(s < 0 for s in grid):
        raise ValueError(f"{name} has a negative scale ({min(grid)}): scales are L2 norms, use >= 0")
    if any(b <= a for a, b in zip(grid, grid[1:])):
        raise ValueError(f"{name} is not strictly increasing: sort it and drop repeats")
    return grid


def linspace(start: float, stop: float, num: int) -> tuple[float, ...]:
    """Like numpy.linspace, as a tuple of Python floats (kept JSON- and hash-friendly)."""
    if num == 1:
        return (float(start),)
    step = (stop - start) / (num - 1)
    return tuple(float(start + i * step) for i in range(num))


class ExplainConfig(BaseModel):
    """Every setting of one self-explanation sweep (METHOD.md sections 3-7)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: Preset = "default"
    """Name of the preset these values came from (recorded with every label)."""
    injection_layer: int = Field(2, ge=0)
    """Replace the residual entering this decoder block (0-indexed) at every placeholder."""
    probe_layer: int | None = Field(None, ge=1)
    """Read self-similarity from the residual entering this block; None = model default."""
    scale_unit: ScaleUnit = "relative"
    """`absolute`: scales are L2 norms. `relative`: multiples of the model's typical residual
    norm at the injection layer (measured once per model)."""
    metric_scales: tuple[float, ...] = linspace(0.0, 2.0, 9)
    """Scales of the metric pass (self-similarity, entropy, cross-entropy). 0 to 2x the residual
    norm in 9 steps was chosen on the DEV planted words (scripts/selection_study.py); the default
    preset leaves out 0.25 (the same DEV scores at 8 instead of 9 rows: every row is a prompt pass
    and a scale's samples; 0.5-1.5 alone lost recovery)."""
    generation_scales: tuple[float, ...] | None = None
    """Scales at which explanations are sampled. None = the `top_scales` best metric scales."""
    top_scales: int | None = Field(None, ge=1)
    """With generation_scales None: sample at this many best-composite metric scales; None = at
    every metric scale >= min_scale (sampling reuses the metric pass's KV cache)."""
    repeat_scales: int = Field(4, ge=0)
    """The repeat prompt runs at this many of the meaning prompt's best-composite sampled scales;
    0: not at all (the `peak` token recovery then reads the meaning prompt's answers only). The
    default preset takes 1: on DEV (60 planted words, 40 single-token latents, float32) 4, 2 and 1
    scales gave the same planted top-3 (.98) and recovery (typical inputs .90, decoder rows .68-.70)
    at 102, 81 and 69 GFLOP per latent; 0 lost recovery (.83 and .55)."""
    samples_per_scale: int = Field(4, ge=1)
    """Samples drawn at each sampled scale. With the round trip picking among them, more samples
    is more quality: on 100 DEV words the word is in the top 3 for 56/69/82/84% with 1/2/3/4."""
    min_scale: float = Field(0.125, ge=0)
    """Scales below this never win: their composite is set to the grid's minimum."""
    alpha: float = Field(0.4, ge=0, le=1)
    """composite = alpha * mm(selfsim) - (1 - alpha) * mm(entropy_metric)."""
    entropy_metric: Metric = "entropy"
    selection: Selection = "roundtrip"
    """How explanations are ranked: the post's `composite`, `selfsim` or `entropy` alone,
    `consensus` (agreement of content words across scales, composite as tie-break) or `roundtrip`
    (each explanation read back through the model and compared with the direction, consensus as
    tie-break; selection.py). On 100 DEV words, 32 samples each: composite 22%, consensus 46%,
    roundtrip 84% (any sample right: 85%)."""
    consensus_weight: float = Field(5.0, ge=0)
    """Weight of cross-scale agreement against the composite (in [-1, 0.4]) in `consensus` and
    `roundtrip`."""
    roundtrip_weight: float = Field(10.0, ge=0)
    """Weight of the round-trip cosine against the consensus score in `roundtrip`."""
    top_n: int = Field(3, ge=1)
    max_new_tokens: int = Field(40, ge=1, le=512)
    """Token budget of each answer (the post: about 40). The default preset takes 24: answers end
    at their closing quote (median 2 tokens, 95% within 11 on DEV features), and the last few
    run-ons kept small batches decoding for 16 more steps, a tenth of the time; on DEV, 200 real
    features and 100 planted words scored the same at 24 and 40 (26 of 200 run-on labels shorter)."""
    repeat_max_new_tokens: int | None = Field(None, ge=1, le=512)
    """Token budget of the repeat prompt's answers; None = `max_new_tokens`. A copied token needs
    a few: past them a sample is a run-on that never names one token, and those last rows kept
    the whole batch decoding for 30 more steps."""
    temperature: float = Field(1.0, gt=0)
    failure_metric: FailureMetric = "roundtrip"
    """What the failure flag reads: the post's max self-similarity over the grid, or the best
    round trip of a meaning candidate (no explanation reads back as the direction)."""
    failure_threshold: float = 0.3
    """A feature whose `failure_metric` stays below this is flagged as a likely failure. The
    post's value for self-similarity is 0.01. For the round trip, 0.3 is the highest threshold
    whose flags were all right on 60 DEV planted words (14 flagged, all with a wrong top 3; recall
    .56); random directions on the default model never read back above 0.15.
    On real latents against held-out detection (stop 23, `scripts/calibrate_flag.py`,
    docs/evaluation/flag_calibration; a label is bad when its held-out detection AUROC is no
    better than the 90th percentile of another latent's label, .594): 0.3 flags 7% of 200 TEST
    latents with precision .85 [.58,.96] and recall .11; the threshold chosen on 200 DEV latents
    for the highest recall at precision >= .8 (0.449: DEV .81 / .36) gives TEST precision .63
    [.49,.75] at recall .33, so 0.3 stays. The round trip ranks bad labels below good ones with
    AUROC .63 only: filter on `detection_auroc` where it exists."""
    direction: Literal["decoder", "input", "auto"] = "decoder"
    """What is injected for an SAE latent: its unit decoder row (the published method), its
    typical input (the activation-weighted mean of the mean-free residuals it fires on, shipped
    with the SAE as typical_inputs.safetensors), or `auto`: the typical input when the SAE ships
    it, else the decoder row (the default preset). On 40 DEV features of the default SAE, input vs
    decoder: single-token recovery 60% vs 20%, embedding AUROC .77 vs .73
    (scripts/direction_study.py). Other directions (words, vectors) ignore it."""
    seed: int = 0
    placeholder: str = "X"
    recover_token: bool = True
    """Also run the repeat prompt to recover the literal token."""
    token_recovery: TokenRecovery = "answer"
    """How the literal token is read off the samples. `answer`: the post's, the repeat prompt's
    best-ranked answer (the most frequent one unless `selection` is `composite`). `peak`: the
    token, over every answer of both prompts, where the round trip peaks (of `to order` the
    ` order`): single-token recovery on 100 DEV features 48% -> 78% with typical inputs, 14% ->
    38% on decoder rows (scripts/recovery_study.py)."""
    adapter: str = "none"
    """A learned self-interpretation adapter (`adapter.py`): `none` injects `scale * direction`
    (the published method, the faithful preset), `auto` the adapter shipped for the default model
    when the model is that model (the default preset), `default` insists on it, or a path to an
    adapter file (`selfexplain train-adapter`). The settings hash records the adapter's content
    digest. On DEV (60 planted words, 30 single-token latents of ids % 4 == 2,
    scripts/adapter_study.py): planted top-3 .67 -> 1.00, token recovery on decoder rows .53 ->
    .73 and on typical inputs .80 -> .93; docs/evaluation/adapter for TEST."""
    precision: Precision = "float32"
    """The model's weights and activations: the engine checks that the loaded model matches.
    bfloat16 is 4x float32's matmul throughput on this CPU (AVX512-BF16) and what the product's
    CLI and flows use (`--precision`); float32 stays the library default, for exact tests."""
    batch_rows: int = Field(128, ge=1)
    """Rows (feature x scale) per batched forward pass; a chunk of batch_rows / len(scales)
    latents is sampled as one batch (the default preset: 512)."""

    @field_validator("metric_scales")
    @classmethod
    def _metric_grid(cls, grid: tuple[float, ...]) -> tuple[float, ...]:
        return _check_grid(grid, "metric scale grid")

    @field_validator("generation_scales")
    @classmethod
    def _generation_grid(cls, grid: tuple[float, ...] | None) -> tuple[float, ...] | None:
        return None if grid is None else _check_grid(grid, "generation scale grid")

    @field_validator("adapter")
    @classmethod
    def _adapter(cls, value: str) -> str:
        from selfexplain.adapter import check_spec

        return check_spec(value)

    @field_validator("placeholder")
    @classmethod
    def _placeholder(cls, value: str) -> str:
        if not value.strip() or '"' in value:
            raise ValueError("placeholder must be a non-empty word without quotes, e.g. X")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ExplainConfig":
        if self.probe_layer is not None and self.probe_layer <= self.injection_layer:
            raise ValueError(
                f"probe layer {self.probe_layer} must come after injection layer {self.injection_layer}"
            )
        if self.repeat_scales == 0 and self.recover_token and self.token_recovery == "answer":
            raise ValueError("repeat_scales 0 runs no repeat prompt, so the `answer` token "
                             "recovery has nothing to read: use token_recovery peak")
        if len(self.metric_scales) < 2:
            raise ValueError("metric scale grid needs at least 2 scales (min-max normalisation)")
        return self

    @classmethod
    def from_preset(cls, preset: Preset = "default", **overrides: object) -> "ExplainConfig":
        """The named preset with `overrides` applied; raises InputError with one clear line."""
        base: dict[str, object] = dict(PRESETS.get(preset, {}))
        if preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r}: choose one of {sorted(PRESETS)}")
        base.update({k: v for k, v in overrides.items() if v is not None})
        base["preset"] = preset
        return build_validated(cls, base, "config")

    @property
    def torch_dtype(self) -> "torch.dtype":
        return torch_dtype(self.precision)

    def null_hash(self) -> str:
        """Hash of the settings a failure-threshold null depends on: everything but the threshold
        itself, the ranking (the null reads the best of all candidates) and the batch size. It
        keys `layer_threshold` rows, so `relabel --layer-threshold` finds what `evaluate` drew."""
        return self._dump_hash(exclude={"preset", "failure_threshold", "batch_rows", "top_n",
                                        "selection", "consensus_weight", "roundtrip_weight",
                                        "direction", "token_recovery"})

    def settings_hash(self) -> str:
        """Stable short hash of every setting except the seed's presentation; used in cache keys."""
        return self._dump_hash()

    def _dump_hash(self, exclude: set[str] | None = None) -> str:
        import hashlib

        exclude = set(exclude or ())
        # fields added later are left out at their neutral value: runs stored before them keep
        # their hash
        if self.direction == "decoder":
            exclude.add("direction")
        if self.precision == "float32":
            exclude.add("precision")
        if self.repeat_max_new_tokens is None:
            exclude.add("repeat_max_new_tokens")
        if self.token_recovery == "answer":
            exclude.add("token_recovery")
        dump = self.model_dump(mode="json", exclude=exclude | {"adapter"})
        if self.adapter != "none" and "adapter" not in exclude:
            from selfexplain.adapter import spec_digest

            dump["adapter"] = spec_digest(self.adapter)  # the content, not the name or path
        return hashlib.sha256(json.dumps(dump, separators=(",", ":")).encode()).hexdigest()[:16]

def check_layers(injection_layer: int, probe_layer: int | None, n_layers: int) -> None:
    """Raise InputError when the injection or probe layer does not fit a model of `n_layers`
    blocks (`probe_layer` None: not set, only the injection layer is checked)."""
    if injection_layer >= n_layers:
        raise InputError(
            f"injection layer {injection_layer} is beyond the model's {n_layers} blocks"
        )
    if probe_layer is not None and not injection_layer < probe_layer < n_layers:
        raise InputError(
            f"probe layer {probe_layer} must lie between the injection layer "
            f"{injection_layer} and the model's {n_layers} blocks"
        )


PRESETS: dict[str, dict[str, object]] = {
    # The post's recipe: absolute 0-200 grids, 64 metric scales, one sample at each of 32 scales,
    # composite with alpha 0.4, scales under 10 never chosen.
    "faithful": dict(
        scale_unit="absolute",
        metric_scales=linspace(0.0, 200.0, 64),
        generation_scales=linspace(0.0, 200.0, 32),
        samples_per_scale=1,
        min_scale=10.0,
        alpha=0.4,
        selection="composite",
        entropy_metric="entropy",
        failure_metric="selfsim",
        failure_threshold=0.01,
    ),
    # Stop 33 (scripts/throughput_study.py, docs/evaluation/throughput): the repeat prompt at the
    # best scale only and no 0.25 scale (it never gave a better answer): 100 -> 62 GFLOP per
    # latent, 1.45 -> 0.8 s in float32, DEV planted top-3 and token recovery unchanged.
    # Stop 37: 512 rows a batch (64 latents x 8 scales, 1,792 sampled rows): a decode step of a
    # few rows costs as much as one of hundreds (~50 ms: the weights are read either way), and
    # every batch ends in ~20 such steps for its few long answers; at 128 rows those were paid
    # every 16 latents. With this stop's other levers, make bench on a 2-core Xeon (bfloat16):
    # 0.27 -> 0.19 s per latent, peak RSS 2.2 GB (docs/evaluation/throughput).
    "default": dict(direction="auto", max_new_tokens=24, repeat_max_new_tokens=8,
                    token_recovery="peak", adapter="auto",
                    metric_scales=(0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0), repeat_scales=1,
                    batch_rows=512),
}


def parse_scales(text: str) -> tuple[float, ...]:
    """Parse `0,10,20` or `0:200:64` (start:stop:count) into a validated grid."""
    text = text.strip()
    try:
        if text.count(":") == 2:
            start, stop, num = text.split(":")
            count = int(num)
            grid = linspace(float(start), float(stop), count) if 1 <= count <= 10_000 else ()
        else:
            count = 1
            grid = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(
            f"scale grid {text!r} is not a list like 0,10,20 or a range like 0:200:64"
        ) from None
    if not 1 <= count <= 10_000:
        raise InputError(f"scale grid {text!r}: count must be between 1 and 10000")
    try:
        return _check_grid(grid, f"scale grid {text!r}")
    except ValueError as err:
        raise InputError(str(err)) from None
