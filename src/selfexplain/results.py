"""What the engine returns: plain records (no tensors), ready for JSON, polars and the warehouse."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Candidate:
    """One sampled explanation and every score used to rank it."""

    prompt: str
    """`meaning` or `repeat`."""
    text: str
    """The generated answer, cut at the closing quote / end of turn."""
    scale: float
    """Injected L2 norm (absolute, whatever the config's unit)."""
    sample: int
    """Index of this sample among those drawn at this scale."""
    composite: float
    """The post's composite at the sample's (nearest metric) scale."""
    score: float
    """The ranking score of the configured selection strategy (= composite for `composite`)."""
    rank: int
    """0-based rank among this feature's candidates of the same prompt (0 = best)."""
    chosen: bool
    """Among the top_n shown as the label."""
    extra: dict[str, float] = field(default_factory=dict)
    """Strategy-specific scores (e.g. `agreement`), so users can see why a label won."""
    peak_token: str | None = None
    """The token of `text` whose residual reads back closest to the direction (where the round
    trip peaks); None for an empty answer."""


@dataclass(frozen=True)
class Sweep:
    """Per-scale metrics of one prompt for one feature (METHOD.md section 6)."""

    prompt: str
    scales: list[float]
    selfsim: list[float]
    entropy: list[float]
    crossent: list[float]
    composite: list[float]


@dataclass(frozen=True)
class FeatureExplanation:
    """Everything learned about one feature (or vector) in one run."""

    feature: int
    """SAE latent index, or the row index of an explained vector/word."""
    name: str
    """Human name: `feature 17`, the word, or the vector file."""
    explanations: list[Candidate]
    """Top-n meaning candidates, best first (the label is explanations[0].text)."""
    recovered_token: str | None
    recovered_reliable: bool
    failed: bool
    failure_reason: str | None
    max_selfsim: float
    max_selfsim_repeat: float | None
    candidates: list[Candidate]
    """Every sampled candidate of both prompts, with scores."""
    sweeps: list[Sweep]
    seconds: float = 0.0
    max_roundtrip: float | None = None
    """Best round-trip score of a non-empty meaning candidate (None when there is none)."""

    @property
    def label(self) -> str | None:
        return self.explanations[0].text if self.explanations else None

    def to_dict(self, *, full: bool = False) -> dict[str, object]:
        """JSON-ready dict; `full` adds every candidate and the per-scale sweeps."""
        data = asdict(self)
        data["label"] = self.label
        data["explanations"] = [
            {"text": c.text, "scale": c.scale, "composite": c.composite, "score": c.score}
            for c in self.explanations
        ]
        if not full:
            data.pop("candidates")
            data.pop("sweeps")
        return data


@dataclass(frozen=True)
class SkippedFeature:
    """A feature that could not be explained (e.g. NaN or zero decoder row), with the reason."""

    feature: int
    reason: str
