"""Directions that are not SAE features: vector files and planted word directions.

A word's planted direction is its own residual at the injection layer, made mean-free by
subtracting the mean residual over a reference vocabulary in the same context: what remains is
what distinguishes this word, so the right explanation is known in advance.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from selfexplain.errors import InputError
from selfexplain.forward import residual_entering
from selfexplain.models import LoadedModel

WORD_CONTEXT = "Word:{word}"
"""The word follows a short neutral prefix so it never sits at position 0 (the attention sink)."""

REFERENCE_WORDS = tuple(
    " " + w for w in (
        "time person year way day thing man world life hand part child eye woman place work week "
        "case point government company number group problem fact house water room money story "
        "month book job word business issue side kind head service friend father power hour game "
        "line end member law car city community name president team minute idea kid body "
        "information back parent face others level office door health art war history party result "
        "change morning reason research girl guy moment air teacher force education go make know "
        "take see come think look want give use find tell ask seem feel try leave call good new "
        "first last long great little own other old right big high different small large next "
        "early young important few public bad same able red blue green happy sad quickly slowly"
    ).split()
)


def load_vectors(path: str | Path, key: str | None = None) -> Tensor:
    """Load (n, d) or (d,) directions from .npy, .pt/.pth or .safetensors; returns (n, d) float32."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"vector file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            import numpy as np

            array = np.load(path, allow_pickle=False)
            tensor = torch.from_numpy(np.asarray(array, dtype=np.float32))
        elif suffix in (".pt", ".pth"):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            tensor = _pick(loaded, key, path)
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            tensor = _pick(load_file(str(path)), key, path)
        else:
            raise InputError(f"{path}: unsupported vector file type {suffix!r} (use .npy, .pt, .safetensors)")
    except InputError:
        raise
    except Exception as err:  # numpy/torch/safetensors raise many types on corrupt files
        raise InputError(f"cannot read vector file {path}: {type(err).__name__}: {str(err)[:120]}") from None
    tensor = tensor.float()
    if tensor.ndim == 1:
        tensor = tensor[None, :]
    if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise InputError(f"{path}: expected a vector (d,) or a matrix (n, d), got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise InputError(f"{path}: contains NaN or infinity")
    if (tensor.norm(dim=-1) < 1e-8).any():
        raise InputError(f"{path}: contains a zero vector, which has no direction")
    return tensor


def _pick(loaded: object, key: str | None, path: Path) -> Tensor:
    if isinstance(loaded, Tensor):
        return loaded
    if isinstance(loaded, dict):
        tensors = {k: v for k, v in loaded.items() if isinstance(v, Tensor)}
        if key is not None:
            if key not in tensors:
                raise InputError(f"{path} has no tensor {key!r} (found: {sorted(tensors)[:5]})")
            return tensors[key]
        if len(tensors) == 1:
            return next(iter(tensors.values()))
        raise InputError(f"{path} holds several tensors {sorted(tensors)[:5]}: choose one with --key")
    raise InputError(f"{path} holds a {type(loaded).__name__}, not a tensor")


def word_residuals(lm: LoadedModel, words: list[str], layer: int) -> Tensor:
    """Residual entering `layer` at the last token of each word in WORD_CONTEXT: (n, d_model).

    Words of equal token length share a forward (no padding), which stops at `layer`.
    """
    encoded = [lm.tokenizer(WORD_CONTEXT.format(word=w), add_special_tokens=False).input_ids
               for w in words]
    out = torch.zeros(len(words), lm.d_model)
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        groups.setdefault(len(ids), []).append(i)
    for rows in groups.values():
        for start in range(0, len(rows), 256):
            chunk = rows[start : start + 256]
            ids = torch.tensor([encoded[i] for i in chunk])  # (chunk, seq)
            out[chunk] = residual_entering(lm, layer, ids)[:, -1].float().cpu()
    return out


_MEAN_CACHE: dict[tuple[int, int], Tensor] = {}


def word_directions(lm: LoadedModel, words: list[str], layer: int) -> Tensor:
    """Mean-free unit directions of `words` at `layer` (the planted concepts): (n, d_model)."""
    if not words or any(not w.strip() for w in words):
        raise InputError("give at least one non-empty word, e.g. --word ' dog'")
    key = (id(lm.model), layer)
    if key not in _MEAN_CACHE:
        _MEAN_CACHE[key] = word_residuals(lm, list(REFERENCE_WORDS), layer).mean(dim=0)
    directions = word_residuals(lm, words, layer) - _MEAN_CACHE[key]
    return directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-12)
