"""A learned self-interpretation adapter: an affine map of what is injected, model kept frozen.

Following "Learning Self-Interpretation from Interpretability Artifacts" (arXiv 2602.10352), the
engine injects `a * s * unit(v) + b + (s / unit) * c` instead of `s * unit(v)`: `a` a scalar gain,
`b` a bias vector (the paper: the bias alone carries most of the gain), `c` an optional
per-scale bias (linear in the relative scale). d_model + 1 parameters (2 d_model + 1 with `c`).
The identity adapter (a = 1, b = c = 0) injects exactly what the engine injects without one.

An adapter belongs to one model and one injection layer: the file records both (the model's
fingerprint: a digest of its input embedding) and `check_fits` refuses any other.
Training lives in `adapter_training`; this module only applies, saves and loads.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from selfexplain.errors import InputError

FORMAT = "selfexplain-adapter/1"


@dataclass(frozen=True)
class Adapter:
    """injected = gain * s * u + bias + (s / unit) * scale_bias, for unit directions u."""

    gain: float
    bias: Tensor  # (d_model,) float32
    scale_bias: Tensor | None  # (d_model,) float32, or None
    injection_layer: int
    model_fingerprint: str
    """`model_fingerprint(lm)` of the model it was trained on ("" for an identity adapter)."""
    unit: float = 1.0
    """The residual norm the relative scales are multiples of (for `scale_bias`)."""
    info: str = "{}"
    """JSON: how it was trained (data, steps, losses), for the record."""

    @property
    def d_model(self) -> int:
        return int(self.bias.shape[0])

    @property
    def is_identity(self) -> bool:
        return (self.gain == 1.0 and not bool(self.bias.any())
                and (self.scale_bias is None or not bool(self.scale_bias.any())))

    @property
    def digest(self) -> str:
        """Content hash (16 hex): part of the settings hash of every label it produced."""
        sha = hashlib.sha256()
        sha.update(f"{FORMAT}|{self.gain!r}|{self.injection_layer}|{self.unit!r}".encode())
        sha.update(self.bias.float().contiguous().numpy().tobytes())
        if self.scale_bias is not None:
            sha.update(self.scale_bias.float().contiguous().numpy().tobytes())
        return sha.hexdigest()[:16]

    def apply(self, scales: Tensor, directions: Tensor) -> Tensor:
        """What is injected: scales (n,) absolute norms, directions (n, d_model) unit ->
        (n, d_model). Differentiable in the adapter's tensors (training uses the same code)."""
        vectors = (self.gain * scales)[:, None] * directions  # (n, d_model)
        if self.bias.any() or self.bias.requires_grad:
            vectors = vectors + self.bias
        if self.scale_bias is not None:
            vectors = vectors + (scales / self.unit)[:, None] * self.scale_bias
        return vectors

    def check_fits(self, fingerprint: str, d_model: int, injection_layer: int) -> None:
        """Refuse a model or layer the adapter was not trained for, in one line."""
        if self.d_model != d_model:
            raise InputError(f"the adapter is for d_model {self.d_model}, the model has {d_model}")
        if self.is_identity:
            return
        if self.injection_layer != injection_layer:
            raise InputError(f"the adapter was trained for injection layer {self.injection_layer}, "
                             f"the run injects at {injection_layer}: train one for this layer "
                             f"(selfexplain train-adapter --layer {injection_layer})")
        if self.model_fingerprint != fingerprint:
            raise InputError("the adapter was trained on another model (its embedding fingerprint "
                             f"{self.model_fingerprint} is not this model's {fingerprint}): train "
                             "one for this model with selfexplain train-adapter")


def identity(d_model: int, injection_layer: int = 2) -> Adapter:
    """The adapter that changes nothing."""
    return Adapter(1.0, torch.zeros(d_model), None, injection_layer, "")


def model_fingerprint(embedding: Tensor) -> str:
    """A digest of a model's input embedding matrix (vocab, d_model): which model an adapter
    belongs to, whatever path, id or precision it was loaded by (values rounded to bfloat16, so
    a float32 and a bfloat16 load agree). A strided sample keeps it cheap."""
    flat = embedding.detach().flatten()
    step = max(1, flat.numel() // 65_536)
    # sample first, round after: the same values, without converting the whole matrix
    sample = flat[::step][:65_536].to(torch.bfloat16).float().contiguous()
    digest = hashlib.sha256(f"{tuple(embedding.shape)}".encode())
    digest.update(sample.cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def check_adapter_path(path: str | Path) -> Path:
    """Where an adapter may be written: a `.safetensors` file (one clear line otherwise)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"{path}: write the adapter to a .safetensors file")
    return path


def save_adapter(adapter: Adapter, path: str | Path) -> Path:
    """Write the adapter as .safetensors with its metadata (atomic: temp file, then rename)."""
    from safetensors.torch import save_file

    from selfexplain.feature_stats import write_atomically

    path = check_adapter_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"bias": adapter.bias.detach().float().contiguous()}
    if adapter.scale_bias is not None:
        tensors["scale_bias"] = adapter.scale_bias.detach().float().contiguous()
    metadata = {"format": FORMAT, "gain": repr(float(adapter.gain)),
                "injection_layer": str(adapter.injection_layer),
                "model_fingerprint": adapter.model_fingerprint, "unit": repr(float(adapter.unit)),
                "info": adapter.info}
    return write_atomically(path, lambda partial: save_file(tensors, str(partial),
                                                             metadata=metadata))


def load_adapter(path: str | Path) -> Adapter:
    """Read an adapter file; one clear line for a missing, foreign or corrupt file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"adapter file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as err:  # safetensors raises several types on a corrupt header
        raise InputError(f"cannot read adapter {path}: {type(err).__name__}: {str(err)[:120]}") from None
    if metadata.get("format") != FORMAT or "bias" not in tensors:
        raise InputError(f"{path} is not a selfexplain adapter (no {FORMAT!r} metadata and bias)")
    bias = tensors["bias"].float()
    scale_bias = tensors.get("scale_bias")
    gain = float(metadata["gain"])
    values = [bias] + ([scale_bias] if scale_bias is not None else [])
    if not all(bool(torch.isfinite(v).all()) for v in values) or not torch.isfinite(torch.tensor(gain)):
        raise InputError(f"{path}: the adapter holds NaN or infinity")
    return Adapter(gain, bias, None if scale_bias is None else scale_bias.float(),
                   int(metadata["injection_layer"]), metadata.get("model_fingerprint", ""),
                   float(metadata.get("unit", "1.0")), metadata.get("info", "{}"))


ADAPTER_CHOICES = ("auto", "default", "none")
"""`--adapter`: `auto` (the shipped adapter when it was trained on this model and layer, else
none), `default` (the shipped adapter; refused on another model), `none`, or a path to a file."""

SHIPPED_ADAPTER = "smollm2-135m-instruct-l2.safetensors"


def shipped_adapter_path() -> Path:
    """The default model's adapter, shipped with the package (data/adapters/)."""
    return Path(str(resources.files("selfexplain").joinpath("data", "adapters", SHIPPED_ADAPTER)))


def check_spec(spec: str) -> str:
    """Validate `--adapter` at the edge: a choice, or an existing file (one clear line)."""
    spec = spec.strip()
    if spec in ADAPTER_CHOICES:
        return spec
    if not Path(spec).expanduser().is_file():
        raise ValueError(f"adapter {spec!r} is neither auto, default, none nor an existing file")
    return spec


def spec_digest(spec: str) -> str | None:
    """What the settings hash records for `--adapter spec`: None for none, else the digest of
    the file it names (`auto`: the shipped file's, whichever model runs; "absent" when no adapter
    ships), so retraining an adapter relabels what it labelled."""
    if spec == "none":
        return None
    path = shipped_adapter_path() if spec in ("auto", "default") else Path(spec).expanduser()
    if not path.is_file():
        return "absent"
    return _file_digest(str(path), path.stat().st_mtime_ns, path.stat().st_size)


@lru_cache(maxsize=32)
def _file_digest(path: str, _mtime: int, _size: int) -> str:
    return load_adapter(path).digest


def resolve_for_model(spec: str, lm: object, injection_layer: int) -> Adapter | None:
    """The adapter `spec` names for this loaded model (None: inject `scale * direction`)."""
    if spec == "none":
        return None
    embedding = lm.model.get_input_embeddings().weight  # type: ignore[attr-defined]
    fingerprint = model_fingerprint(embedding)
    d_model = int(embedding.shape[1])
    if spec in ("auto", "default"):
        path = shipped_adapter_path()
        if not path.is_file():
            if spec == "auto":
                return None
            raise InputError(f"no adapter ships with this package ({path.name} is missing): "
                             "train one with selfexplain train-adapter")
        adapter = load_adapter(path)
        if spec == "auto" and (adapter.model_fingerprint != fingerprint
                               or adapter.injection_layer != injection_layer
                               or adapter.d_model != d_model):
            return None
    else:
        adapter = load_adapter(Path(spec).expanduser())
    adapter.check_fits(fingerprint, d_model, injection_layer)
    return adapter


def describe(adapter: Adapter) -> str:
    """One line for logs: gain, bias norm, training summary."""
    info = json.loads(adapter.info or "{}")
    parts = [f"gain {adapter.gain:.3f}", f"|bias| {float(adapter.bias.norm()):.2f}"]
    if adapter.scale_bias is not None:
        parts.append(f"|scale bias| {float(adapter.scale_bias.norm()):.2f}")
    if "dev_loss" in info:
        parts.append(f"DEV loss {info['dev_loss_identity']:.3f} -> {info['dev_loss']:.3f}")
    return f"adapter {adapter.digest}: " + ", ".join(parts)
