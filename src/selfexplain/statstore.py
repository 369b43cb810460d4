"""The one place an SAE's statistics are found, whatever the SAE: shipped beside it, or collected.

Statistics (feature_stats.parquet, typical_inputs.safetensors and, from `collect`, the held-out
examples) are looked up in this order:

1. the SAE's own folder, when it ships `feature_stats.parquet` (the embedded default SAE, folders
   written by `train-sae`, or a folder someone copied statistics into);
2. the collect cache: `<cache>/stats/<sae key>/<collect key>/`, where the SAE key is a digest of
   the decoder and hook (so the same weights found under another path or id reuse them) and the
   collect key names the corpus and settings; the newest complete collect wins.

The cache root is `$SELFEXPLAIN_STATS`, else `<selfexplain cache>/stats`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl
from torch import Tensor

from selfexplain.collect import HELDOUT_EXAMPLES_FILE, HELDOUT_LATENTS_FILE, MANIFEST_FILE
from selfexplain.errors import InputError
from selfexplain.saes import (
    TYPICAL_INPUTS_FILE,
    SaeDirections,
    load_sae_decoder,
    read_typical_inputs,
    sae_folder,
)
from selfexplain.feature_stats import STATS_FILE


def stats_root() -> Path:
    if os.environ.get("SELFEXPLAIN_STATS"):
        return Path(os.environ["SELFEXPLAIN_STATS"]).expanduser()
    from selfexplain.models import default_cache_dir

    return default_cache_dir() / "stats"


def sae_key(decoder: Tensor, hook_name: str | None) -> str:
    """Digest of the decoder rows (as float32) and the hook: names an SAE by its weights."""
    sha = hashlib.sha256(decoder.float().contiguous().numpy().tobytes())
    sha.update(str(hook_name).encode())
    return sha.hexdigest()[:16]


def collect_key(parts: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def collect_folder(sae: str, collect: str) -> Path:
    return stats_root() / sae / collect


@dataclass(frozen=True)
class StatsLocation:
    folder: Path
    kind: str  # "shipped" (beside the SAE) or "collected"
    manifest: dict



def find_stats(sae: SaeDirections, folder: Path | None = None) -> StatsLocation | None:
    """Where this SAE's statistics are (see the module docstring), or None."""
    if folder is not None and any((Path(folder) / name).is_file()
                                  for name in (STATS_FILE, TYPICAL_INPUTS_FILE)):
        manifest = _read_manifest(Path(folder))
        return StatsLocation(Path(folder), "shipped", manifest)
    root = stats_root() / sae_key(sae.decoder, sae.hook_name)
    try:
        candidates = [p for p in root.iterdir() if (p / MANIFEST_FILE).is_file()]
    except OSError:
        return None
    if not candidates:
        return None
    newest = max(candidates, key=lambda p: (p / MANIFEST_FILE).stat().st_mtime)
    return StatsLocation(newest, "collected", _read_manifest(newest))


def _read_manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return {}


def heldout_dir(sae: SaeDirections) -> Path | None:
    """The statistics folder of `sae` when it holds collect's held-out examples, else None."""
    if sae.stats_dir is None:
        return None
    folder = Path(sae.stats_dir)
    has = all((folder / n).is_file() for n in (HELDOUT_EXAMPLES_FILE, HELDOUT_LATENTS_FILE))
    return folder if has else None


def load_sae(spec: str, *, statistics: bool = True) -> SaeDirections:
    """`default`, a sae-lens folder, a `.safetensors` file with `W_dec`, or `RELEASE/SAE_ID`;
    with its typical inputs attached when statistics exist for it (`find_stats`)."""
    loaded = load_sae_decoder(spec)
    return attach_statistics(loaded, sae_folder(spec)) if statistics else loaded


def attach_statistics(sae: SaeDirections, folder: Path | None = None) -> SaeDirections:
    """`sae` with its typical inputs and `stats_dir` set when statistics exist for it."""
    location = find_stats(sae, folder)
    if location is None:
        return sae
    inputs = None
    if (location.folder / TYPICAL_INPUTS_FILE).is_file():
        inputs = read_typical_inputs(location.folder, sae.decoder.shape)
    return replace(sae, inputs=inputs, stats_dir=str(location.folder))


def load_stats_frame(sae: SaeDirections, folder: Path | None = None) -> pl.DataFrame | None:
    """The per-latent statistics (`feature_stats.SCHEMA`) of this SAE, or None when none exist."""
    from selfexplain.feature_stats import load_feature_stats

    where = Path(sae.stats_dir) if sae.stats_dir else None
    if where is None:
        location = find_stats(sae, folder)
        where = None if location is None else location.folder
    if where is None or not (where / STATS_FILE).is_file():
        return None
    return load_feature_stats(where)


def require_stats_frame(sae: SaeDirections, folder: Path | None = None) -> pl.DataFrame:
    frame = load_stats_frame(sae, folder)
    if frame is None:
        raise InputError(f"SAE {sae.release}/{sae.sae_id} has no feature statistics yet: run "
                         "`selfexplain collect --sae ...` first")
    return frame


def collect_statistics(lm, spec: str, corpus: str = "default", config=None, *,
                       layer: int | None = None, hook_name: str | None = None,
                       k: int | None = None, text_column: str = "text", force: bool = False,
                       progress=None, stop_after_chunks: int | None = None):
    """Collect the statistics of SAE `spec` over `corpus` into the cache (see `collect.collect`);
    a finished collect of the same SAE, corpus and settings is reused unless `force`.
    Returns a collect.CollectResult (None when `stop_after_chunks` stopped it)."""
    import shutil

    from selfexplain.collect import FORMAT_VERSION, CollectConfig, collect, resolve
    from selfexplain.documents import open_documents
    from selfexplain.encoders import load_encoder

    config = config or CollectConfig()
    directions = load_sae(spec, statistics=False)
    directions.check_fits(lm.d_model, lm.n_layers)
    encoder = load_encoder(spec, layer=layer, hook_name=hook_name, k=k)
    context, seed = resolve(config, encoder)
    source = open_documents(corpus, seed=seed, text_column=text_column)
    key = {"format": FORMAT_VERSION, "model": lm.model_id, "revision": lm.revision,
           "release": directions.release, "sae_id": directions.sae_id, "sae_key":
           sae_key(directions.decoder, directions.hook_name), "hook_name": encoder.hook_name,
           "corpus": corpus, "corpus_key": source.key, "context": context, "seed": seed,
           "k": k, **config.model_dump(include={"tokens", "heldout_tokens", "example_tokens",
                                                "heldout_per_latent", "random_examples", "dtype",
                                                "max_pairs"})}
    identity = {k: v for k, v in key.items() if k not in ("corpus", "release", "sae_id")}
    folder = collect_folder(key["sae_key"], collect_key(identity))  # same weights, same text
    if force and folder.exists():
        shutil.rmtree(folder)
    return collect(lm, encoder, source, config, folder, key=key, progress=progress,
                   stop_after_chunks=stop_after_chunks)
