"""Load SAE decoder directions: sae-lens release/id, a local sae-lens folder, or a raw safetensors.

Only the decoder (and b_dec) matter for self-explanation. sae-lens is imported lazily: it costs
seconds and pulls dozens of packages, and most stages never need it.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from selfexplain.errors import InputError, SaeLoadError

DEFAULT_SAE = "default"
DEFAULT_SAE_DIR = Path(__file__).parent / "data" / "default_sae"
"""The embedded SAE for the default model (sae-lens folder format)."""
DEFAULT_SAE_RELEASE = "selfexplain-smollm2-135m-it"
TYPICAL_INPUTS_FILE = "typical_inputs.safetensors"


@dataclass(frozen=True)
class SaeDirections:
    """An SAE's decoder rows and the names we record with every label."""

    release: str
    sae_id: str
    decoder: Tensor  # (d_sae, d_model), float32, rows as stored (not normalised)
    b_dec: Tensor | None  # (d_model,)
    hook_name: str | None
    resid_layer: int | None
    """The block whose *input* residual the SAE reads (blocks.L.hook_resid_post -> L + 1)."""
    model_id: str | None
    """The model the SAE was trained on, if its config says."""
    inputs: Tensor | None = None
    """(d_sae, d_model) each latent's typical input (`stats.typical_inputs`), when statistics
    exist for this SAE (shipped beside it or computed by `selfexplain collect`, see
    `statstore`); explained with `ExplainConfig.direction = "input"`."""
    stats_dir: str | None = None
    """Where this SAE's statistics were found (None: none yet; `selfexplain collect` makes them)."""

    def injected(self, source: str = "auto") -> str:
        """What `unit_directions(source)` injects, as a settings-hash key: `decoder`, or `input:`
        and a digest of the typical inputs (new statistics are new settings: relabelled)."""
        if source == "decoder" or (source == "auto" and self.inputs is None):
            return "decoder"
        if self.inputs is None:
            return "input:none"
        import hashlib

        digest = hashlib.sha256(self.inputs.half().contiguous().numpy().tobytes()).hexdigest()
        return f"input:{digest[:12]}"

    @property
    def d_sae(self) -> int:
        return int(self.decoder.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.decoder.shape[1])

    def check_fits(self, d_model: int, n_layers: int) -> None:
        """Raise SaeLoadError when the SAE cannot belong to a model of this width and depth."""
        if self.d_model != d_model:
            raise SaeLoadError(
                f"SAE {self.release}/{self.sae_id} has width {self.d_model} but the model's residual "
                f"stream is {d_model}: pick the SAE trained on this model"
            )
        if self.resid_layer is not None and self.resid_layer > n_layers:
            raise SaeLoadError(
                f"SAE {self.release}/{self.sae_id} hooks {self.hook_name}, beyond the model's "
                f"{n_layers} blocks: pick the SAE trained on this model"
            )

    def unit_directions(self, features: list[int], source: str = "decoder",
                        ) -> tuple[Tensor, list[int], dict[int, str]]:
        """Unit-norm decoder rows (or, `source` "input", typical inputs; "auto": typical inputs
        when this SAE ships them, else decoder rows) for `features`.

        Returns (directions (n_ok, d_model), the features kept, {feature: reason skipped}) so that a
        NaN, infinite or zero row skips that feature with a reason instead of stopping the run.
        """
        check_features(features, self.d_sae)
        if source == "auto":
            source = "decoder" if self.inputs is None else "input"
        if source == "input" and self.inputs is None:
            raise InputError(
                f"SAE {self.release}/{self.sae_id} has no typical inputs yet: compute them with "
                "`selfexplain collect --sae ...`, or use --direction decoder"
            )
        matrix = self.inputs if source == "input" else self.decoder
        what = "typical input" if source == "input" else "decoder row"
        rows = matrix[torch.tensor(features, dtype=torch.long)].float()  # (n, d_model)
        norms = rows.norm(dim=-1)  # (n,)
        kept: list[int] = []
        skipped: dict[int, str] = {}
        for i, feature in enumerate(features):
            if not torch.isfinite(rows[i]).all():
                skipped[feature] = f"{what} contains NaN or infinity"
            elif float(norms[i]) < 1e-8:
                skipped[feature] = f"{what} is zero (the feature never fired on held-out text)" \
                    if source == "input" else "decoder row is zero"
            else:
                kept.append(i)
        index = torch.tensor(kept, dtype=torch.long)
        directions = rows[index] / norms[index, None]
        return directions, [features[i] for i in kept], skipped


def check_features(features: list[int], d_sae: int) -> None:
    if not features:
        raise InputError("the feature list is empty: give e.g. --features 0-7")
    bad = [f for f in features if f < 0 or f >= d_sae]
    if bad:
        raise InputError(
            f"feature index {bad[0]} is out of range: this SAE has features 0..{d_sae - 1}"
        )
    if len(set(features)) != len(features):
        raise InputError("the feature list repeats an index: give each feature once")


MAX_FEATURES = 10_000_000


def parse_features(text: str) -> list[int]:
    """Parse `0-7`, `12,40`, `0-3,10` into a sorted list of distinct indices."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        match = re.fullmatch(r"([0-9]+)\s*(?:-\s*([0-9]+))?", part)
        if match is None:
            raise InputError(f"feature list {text!r}: {part!r} is not an index or a range like 0-7")
        start = int(match.group(1))
        stop = int(match.group(2)) if match.group(2) is not None else start
        if stop < start:
            raise InputError(f"feature range {part!r} is reversed: write {stop}-{start}")
        if stop - start + len(out) >= MAX_FEATURES:
            raise InputError(f"feature list {text[:40]!r} is too large: at most {MAX_FEATURES:,} "
                             "features (use --all-features for a whole SAE)")
        out.extend(range(start, stop + 1))
    if not out:
        raise InputError("the feature list is empty: give e.g. --features 0-7")
    unique = sorted(set(out))
    if len(unique) != len(out):
        seen: set[int] = set()
        twice = next(f for f in out if f in seen or seen.add(f))
        raise InputError(f"feature list {text[:40]!r} names feature {twice} twice: give each "
                         "feature once")
    return unique


def resid_layer_of(hook_name: str | None) -> int | None:
    """`blocks.6.hook_resid_post` -> 7 (the residual entering block 7); `..resid_pre` -> 6."""
    if not hook_name:
        return None
    match = re.search(r"blocks\.(\d+)\.hook_resid_(pre|post|mid)", hook_name)
    if match is None:
        match = re.search(r"layers\.(\d+)", hook_name)
        return None if match is None else int(match.group(1)) + 1
    layer = int(match.group(1))
    return layer + 1 if match.group(2) == "post" else layer


SAE_ID_KEY = "selfexplain_sae_id"
"""cfg.json `metadata` key naming a trained SAE version (written by `train-sae`); folders without
it are named after the folder."""


def folder_sae_id(folder: Path, cfg: dict | None = None) -> str:
    """The SAE id of a sae-lens folder: its cfg.json's `metadata.selfexplain_sae_id` when set (so a
    retrained SAE written to the same folder is a new version), else the folder's name."""
    if cfg is None:
        try:
            cfg = json.loads((folder / "cfg.json").read_text())
        except (OSError, ValueError):
            cfg = {}
    meta = cfg.get("metadata") if isinstance(cfg, dict) else None
    value = meta.get(SAE_ID_KEY) if isinstance(meta, dict) else None
    return value if isinstance(value, str) and value.strip() else folder.name


def sae_folder(spec: str) -> Path | None:
    """The folder of an SAE spec (`default` or a local sae-lens folder), where its cfg.json,
    statistics and typical inputs live; None for a file or a registry id."""
    path = DEFAULT_SAE_DIR if spec == DEFAULT_SAE else Path(spec).expanduser()
    return path if path.is_dir() else None


def peek_width(spec: str) -> int | None:
    """The SAE's number of latents, read from its cfg.json or safetensors header without loading
    it (sae-lens costs seconds to import); None when it cannot be told cheaply (a registry id,
    a damaged file: the full load then says what is wrong)."""
    folder = sae_folder(spec)
    path = Path(spec).expanduser()
    try:
        if folder is not None:
            width = json.loads((folder / "cfg.json").read_text()).get("d_sae")
            return width if isinstance(width, int) and width > 0 else None
        if spec.endswith(".safetensors") and path.is_file():
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                shape = handle.get_slice("W_dec").get_shape()
            return int(shape[0]) if len(shape) == 2 and shape[0] > 0 else None
    except Exception:  # unreadable or malformed: leave the diagnosis to load_sae
        return None
    return None


def check_sae_spec(spec: str) -> None:
    """SaeLoadError for a spec of no known form, without loading anything (the CLI asks before
    it imports Prefect, so a typo answers in a couple of seconds)."""
    if spec == DEFAULT_SAE or spec.endswith(".safetensors") or "/" in spec:
        return
    if not Path(spec).expanduser().is_dir():
        raise SaeLoadError(
            f"SAE {spec!r} is neither `default`, a folder, a .safetensors file, nor RELEASE/SAE_ID"
        )


def load_sae_decoder(spec: str) -> SaeDirections:
    """`default`, a sae-lens folder, a `.safetensors` file with `W_dec`, or `RELEASE/SAE_ID`, as
    its decoder directions alone; `statstore.load_sae` attaches the statistics found for it."""
    if spec == DEFAULT_SAE:
        if not (DEFAULT_SAE_DIR / "cfg.json").is_file():
            raise SaeLoadError(f"the embedded default SAE is missing from {DEFAULT_SAE_DIR}")
        return load_sae_folder(DEFAULT_SAE_DIR, release=DEFAULT_SAE_RELEASE)
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_sae_folder(path)
    if spec.endswith(".safetensors"):
        return load_raw_safetensors(path)
    check_sae_spec(spec)
    release, sae_id = spec.split("/", 1)
    return load_registry_sae(release, sae_id)


def installed_registry_path() -> Path:
    """sae-lens's `pretrained_saes.yaml`, found without importing sae-lens (seconds saved)."""
    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("sae-lens is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "pretrained_saes.yaml"


def registry() -> dict[str, list[str]]:
    """The installed sae-lens registry: release -> SAE ids (no network). Read from the wheel's
    YAML (under a second) rather than through `import sae_lens` (5-7 s), so an unknown id is
    answered before anything slow."""
    import yaml

    path = installed_registry_path()
    data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return {name: [str(sae["id"]) for sae in entry.get("saes", [])]
            for name, entry in (data or {}).items()}


def resolve_registry_id(release: str, sae_id: str, known: dict[str, list[str]]) -> None:
    """Raise SaeLoadError with near matches when release or id is not in the registry."""
    if release not in known:
        near = difflib.get_close_matches(release, list(known), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(near)}?" if near else "; `selfexplain saes` lists them"
        raise SaeLoadError(f"unknown SAE release {release!r}{hint}")
    if sae_id not in known[release]:
        near = difflib.get_close_matches(sae_id, known[release], n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise SaeLoadError(f"release {release!r} has no SAE id {sae_id!r}{hint}")


def load_registry_sae(release: str, sae_id: str) -> SaeDirections:
    resolve_registry_id(release, sae_id, registry())
    from sae_lens import SAE

    try:
        sae = SAE.from_pretrained(release, sae_id, device="cpu")
    except Exception as err:  # network, auth, missing files: all end the same way for the user
        raise SaeLoadError(
            f"cannot download SAE {release}/{sae_id}: {type(err).__name__}: {str(err)[:120]} "
            "(offline? download it elsewhere and pass its folder)"
        ) from None
    return _from_sae_lens(sae, release, sae_id)


def load_sae_folder(path: Path, release: str | None = None) -> SaeDirections:
    """A sae-lens folder (cfg.json + sae_weights.safetensors), loaded through sae-lens itself."""
    cfg_path = path / "cfg.json"
    if not cfg_path.is_file():
        raise SaeLoadError(f"{path} has no cfg.json: not a sae-lens SAE folder")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SaeLoadError(f"{cfg_path} is not valid JSON ({err}); the folder is corrupt") from None
    from sae_lens import SAE

    try:
        sae = SAE.load_from_disk(str(path), device="cpu")
    except Exception as err:
        first = " ".join(str(err).split())[:160]
        raise SaeLoadError(
            f"cannot load SAE folder {path}: {type(err).__name__}: {first}; its cfg.json or "
            "weights are corrupt, truncated or do not match: copy or export the SAE again"
        ) from None
    loaded = _from_sae_lens(sae, release or f"local:{path.name}", folder_sae_id(path, cfg))
    return _checked(loaded, path)


def read_typical_inputs(folder: Path, shape: torch.Size) -> Tensor | None:
    """The folder's typical inputs, if it ships them with the decoder's shape."""
    from safetensors.torch import load_file

    path = folder / TYPICAL_INPUTS_FILE
    if not path.is_file():
        return None
    try:
        inputs = load_file(str(path))["typical_inputs"].float()
    except Exception as err:  # a torn or foreign file
        raise SaeLoadError(f"cannot read {path}: {type(err).__name__}; compute the statistics "
                           "again or delete the file") from None
    if inputs.shape != shape:
        raise SaeLoadError(f"{path} has shape {tuple(inputs.shape)} but the decoder is "
                           f"{tuple(shape)}: it belongs to another SAE; compute it again")
    return inputs


def _checked(sae: SaeDirections, where: Path | str) -> SaeDirections:
    if sae.d_sae == 0 or sae.d_model == 0:
        raise SaeLoadError(f"the SAE in {where} has an empty decoder {tuple(sae.decoder.shape)}: "
                           "it has no features to label; check the file")
    return sae


def _from_sae_lens(sae: object, release: str, sae_id: str) -> SaeDirections:
    cfg = sae.cfg  # type: ignore[attr-defined]
    metadata = getattr(cfg, "metadata", None)
    hook_name = getattr(metadata, "hook_name", None) or getattr(cfg, "hook_name", None)
    model_id = getattr(metadata, "model_name", None)
    decoder = sae.W_dec.detach().float().cpu()  # type: ignore[attr-defined]  # (d_sae, d_in)
    b_dec = getattr(sae, "b_dec", None)
    return SaeDirections(
        release=release,
        sae_id=sae_id,
        decoder=decoder,
        b_dec=None if b_dec is None else b_dec.detach().float().cpu(),
        hook_name=hook_name,
        resid_layer=resid_layer_of(hook_name),
        model_id=model_id,
    )


def load_raw_safetensors(path: Path) -> SaeDirections:
    """A bare safetensors file holding `W_dec` (d_sae, d_model) and optionally `b_dec`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise SaeLoadError(f"safetensors file not found: {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise SaeLoadError(f"cannot read {path}: {err}; the file is corrupt or truncated: copy or "
                           "export it again") from None
    if "W_dec" not in tensors:
        raise SaeLoadError(f"{path} has no tensor named W_dec (found: {sorted(tensors)[:5]})")
    decoder = tensors["W_dec"].float()
    if decoder.ndim != 2:
        raise SaeLoadError(f"W_dec in {path} has shape {tuple(decoder.shape)}; expected 2-D "
                           "(d_sae, d_model)")
    return _checked(SaeDirections(
        release=f"file:{path.stem}",
        sae_id=path.name,
        decoder=decoder,
        b_dec=tensors.get("b_dec"),
        hook_name=None,
        resid_layer=None,
        model_id=None,
    ), path)
