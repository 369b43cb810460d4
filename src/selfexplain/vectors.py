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


# -- steering vectors by difference of means ----------------------------------------------------

VECTOR_KEY = "vector"


def read_prompt_lines(path: str | Path) -> list[str]:
    """Non-empty, non-comment (#) lines of a text file: one prompt each."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompt file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text: one prompt per line") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if len(prompts) < 2:
        raise InputError(f"{path} has {len(prompts)} prompt(s): a mean needs at least 2, one per line")
    return prompts


def as_chat(lm: LoadedModel, text: str) -> str:
    """`text` as the user turn of the model's chat template, ready for the answer (the position
    where an instruction-tuned model decides how to answer); plain text without a template."""
    template = getattr(lm.tokenizer, "chat_template", None)
    if not template:
        return text
    return lm.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                            add_generation_prompt=True)


@torch.inference_mode()
def last_token_residuals(lm: LoadedModel, prompts: list[str], layer: int, *,
                         chat: bool = True) -> Tensor:
    """(n, d_model) residual entering `layer` at each prompt's last token."""
    rows = []
    for prompt in prompts:
        text = as_chat(lm, prompt) if chat else prompt
        add_special = not chat or not getattr(lm.tokenizer, "chat_template", None)
        ids = lm.tokenizer(text, return_tensors="pt", add_special_tokens=add_special).input_ids
        rows.append(residual_entering(lm, layer, ids)[0, -1].float())
    return torch.stack(rows)


def difference_of_means(lm: LoadedModel, positive: list[str], negative: list[str], layer: int, *,
                        chat: bool = True) -> tuple[Tensor, dict[str, float]]:
    """mean(positive) - mean(negative) of the last-token residual entering `layer` (d_model,),
    and how well it separates the two sets: projections' means, and the fraction of prompts on
    the right side of the midpoint (on the same prompts: an optimistic check, not a test)."""
    pos = last_token_residuals(lm, positive, layer, chat=chat)  # (n_pos, d)
    neg = last_token_residuals(lm, negative, layer, chat=chat)  # (n_neg, d)
    vector = pos.mean(0) - neg.mean(0)
    if float(vector.norm()) < 1e-8:
        raise InputError("the two prompt sets give the same mean residual: no direction")
    unit = vector / vector.norm()
    proj_pos, proj_neg = pos @ unit, neg @ unit
    middle = (proj_pos.mean() + proj_neg.mean()) / 2
    separated = (float((proj_pos > middle).sum()) + float((proj_neg <= middle).sum())) / (
        len(positive) + len(negative))
    return vector, {"norm": float(vector.norm()), "positive_projection": float(proj_pos.mean()),
                    "negative_projection": float(proj_neg.mean()), "separated": separated,
                    "residual_norm": float(torch.cat([pos, neg]).norm(dim=-1).mean())}


def save_vector(path: str | Path, vector: Tensor, metadata: dict[str, str]) -> Path:
    """A (d,) vector as .safetensors (`explain --vector` reads it), with string metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"{path}: write the vector to a .safetensors file")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({VECTOR_KEY: vector.float().contiguous()}, str(path),
              metadata={k: str(v) for k, v in metadata.items()})
    return path
