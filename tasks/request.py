"""The one validated request of a relabel run, and the small records that cross task boundaries.

Built once at the edge (CLI flags, deployment parameters, a new-SAE event) and passed down
unchanged: defaults live here only. No Prefect import, so the CLI can build it cheaply.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from selfexplain.carryover import DEFAULT_MATCH_THRESHOLD
from selfexplain.config import ExplainConfig, Preset, parse_scales
from selfexplain.errors import build_validated
from selfexplain.saes import parse_features
from selfexplain.warehouse import DEFAULT_WAREHOUSE


class RelabelRequest(BaseModel):
    """Relabel `features` of one SAE with one model and one engine configuration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = "default"
    """`default` (embedded SmolLM2), a HF folder or id, or a .gguf file."""
    sae: str = "default"
    """`default`, RELEASE/SAE_ID, a sae-lens folder, or a .safetensors file with W_dec."""
    features: str = "0-15"
    """Indices like `0-15` or `0-3,40`; ignored with all_features."""
    all_features: bool = False
    """Every latent of the SAE (0..d_sae-1)."""
    preset: Preset = "default"
    scales: str | None = None
    """Metric scale grid override: `0,10,20` or `start:stop:count`, in the preset's unit."""
    samples: int | None = Field(None, ge=1)
    """Samples per generation scale (override)."""
    seed: int | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Any other ExplainConfig field, e.g. {"max_new_tokens": 24}. `precision` defaults to
    `auto` here (the product's runs: bfloat16 where the device runs it natively, else float32;
    `models.resolve_precision`), float32 in the library."""
    device: str = "auto"
    """Where the model runs: `auto` (CUDA when present), `cpu`, `cuda`, `cuda:N`. Not in the
    request hash: a GPU run resumes a CPU run's shards and the other way round."""
    warehouse: str = DEFAULT_WAREHOUSE
    shard_size: int = Field(64, ge=1, le=1_000_000)
    """Features per shard: one task (one model load at most) per shard, never one per feature.
    Shards run one after another in a process; parallelism is scale-out (flows/merge.py). 64
    fills one batch of the default preset (512 rows / 8 scales); a shard of 8 ran 8 latents a
    batch, and each batch pays its last decode steps whatever its size."""
    out_dir: str | None = None
    """Parquet mode: shards write Parquet under this folder and the warehouse is not written;
    `flows/merge.py` upserts them later (scale-out)."""
    layer_threshold: bool = False
    """Flag failures with the threshold `selfexplain evaluate --null N --warehouse W` drew for
    this model, SAE layer and settings (a null of random directions), not a fixed number."""
    carry_over: bool = False
    """First match the SAE against the SAEs this warehouse labelled for the same model and hook
    (decoder cosine, mutual nearest neighbours) and carry their labels over as provisional ones;
    then label the unmatched features. Not in the request hash: it changes what runs, not how."""
    matched: Literal["skip", "relabel"] = "skip"
    """With carry_over: `skip` leaves matched features with their carried label; `relabel`
    labels them too, after every unmatched one."""
    match_threshold: float = Field(DEFAULT_MATCH_THRESHOLD, gt=0.0, le=1.0)
    """Decoder cosine at or above which a mutual nearest neighbour counts as the same feature."""
    collect: bool = True
    """When the SAE has no statistics yet and the preset injects typical inputs, compute them
    first (the `collect` task, over `corpus`); False injects decoder rows, said in one line.
    Not in the request hash: what is injected is (`injected`)."""
    corpus: str = "default"
    """The text `collect` reads: `default`, a folder, a Parquet/JSONL file or hf:NAME."""
    collect_tokens: int = Field(1_000_000, ge=1)
    """Training-document activations `collect` reads."""
    score: bool = True
    """Score each new label on held-out text (`label_score`, v_feature_labels.detection_auroc)
    when the SAE's statistics hold held-out examples. Not in the request hash."""

    @model_validator(mode="after")
    def _valid(self) -> "RelabelRequest":
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"unknown device {self.device!r}: give auto, cpu, cuda or cuda:N")
        if not self.all_features:
            parse_features(self.features)
        self.config()
        if self.layer_threshold and "failure_threshold" in self.overrides:
            raise ValueError("give --failure-threshold or --layer-threshold, not both")
        if self.carry_over and self.out_dir is not None:
            raise ValueError("carry-over reads and writes the warehouse: it cannot run with "
                             "--out-dir (Parquet shards); carry over first, then scale out")
        return self

    def with_threshold(self, threshold: float) -> "RelabelRequest":
        """This request with a resolved layer threshold (part of its hash from then on)."""
        return self.model_copy(update={
            "overrides": {**self.overrides, "failure_threshold": threshold},
            "layer_threshold": False})

    @classmethod
    def build(cls, **fields: Any) -> "RelabelRequest":
        """Validate, turning pydantic's report into one InputError line."""
        return build_validated(cls, fields, "request", bare_root=True)

    def config(self) -> ExplainConfig:
        """The engine configuration: the preset with this request's overrides."""
        from selfexplain.models import resolve_precision  # torch: only when the engine is near

        return ExplainConfig.from_preset(
            self.preset,
            **{
                **self.overrides,
                "precision": resolve_precision(self.overrides.get("precision", "auto"),
                                               self.device),
                "metric_scales": parse_scales(self.scales) if self.scales is not None else None,
                "samples_per_scale": self.samples,
                "seed": self.seed,
            },
        )

    def feature_list(self, d_sae: int) -> list[int]:
        return list(range(d_sae)) if self.all_features else parse_features(self.features)

    def injected(self, sae: "SaeInfo") -> str:
        """What the engine injects for this SAE under this request (`SaeDirections.injected`)."""
        direction = self.config().direction
        if direction == "decoder" or (direction == "auto" and sae.typical_inputs is None):
            return "decoder"
        return sae.typical_inputs or "input:none"

    def request_hash(self, release: str, sae_id: str, injected: str = "decoder") -> str:
        """Same model + SAE + settings + injected directions = same hash: shards stored under
        it are not recomputed. Typical inputs collected later change `injected`, so the features
        are labelled again instead of skipped as stored."""
        key = {"model": self.model, "release": release, "sae_id": sae_id,
               "settings": self.config().settings_hash()}
        if injected != "decoder":  # runs on decoder rows keep the hash they had before
            key["injected"] = injected
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class SaeInfo(BaseModel):
    """The ids and shape of a loaded SAE: what crosses task boundaries instead of its weights."""

    model_config = ConfigDict(frozen=True)

    spec: str
    release: str
    sae_id: str
    source: str
    d_sae: int
    d_model: int
    hook_name: str | None = None
    resid_layer: int | None = None
    model_id: str | None = None
    path: str | None = None
    typical_inputs: str | None = None
    """`input:<digest>` of the typical inputs when statistics exist for this SAE, else None."""
    stats_dir: str | None = None
    """Where its statistics were found (`statstore.find_stats`)."""


def shard_key(features: list[int]) -> str:
    """`<first>-<last>-<hash>`: names a shard by its exact feature list."""
    digest = hashlib.sha256(",".join(map(str, features)).encode()).hexdigest()[:8]
    return f"{features[0]}-{features[-1]}-{digest}"


def split_shards(features: list[int], size: int) -> list[list[int]]:
    return [features[i:i + size] for i in range(0, len(features), size)]


def compact(features: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> `0-2,5,7-8` (the form parse_features reads)."""
    parts: list[tuple[int, int]] = []
    for f in sorted(features):
        if parts and parts[-1][1] == f - 1:
            parts[-1] = (parts[-1][0], f)
        else:
            parts.append((f, f))
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)
