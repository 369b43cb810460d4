"""Planted concepts: word lists (DEV / TEST, disjoint) and class concepts, with their directions.

A word's direction is its own mean-free residual at the injection layer (`vectors.word_directions`);
a class's direction is the normalised mean of its members' directions. The expected answers are the
word itself (matched with inflections) or, for a class, any member or listed hypernym.
"""

from __future__ import annotations

import json
import zlib
from importlib import resources
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from selfexplain.errors import InputError
from selfexplain.models import LoadedModel
from selfexplain.vectors import REFERENCE_WORDS, WORD_CONTEXT

Split = Literal["dev", "test"]
SPLITS: tuple[str, ...] = ("dev", "test")


class Concept(NamedTuple):
    """One planted concept and what counts as naming it."""

    name: str
    """The word (no leading space), or the class name."""
    kind: str
    """`word` or `class`."""
    pos: str | None
    """Part of speech of a word (noun, verb, adj, adv, func); None for a class."""
    members: tuple[str, ...]
    """Words whose directions are averaged (one word for a word concept)."""
    answers: tuple[str, ...]
    """Accepted answers: the word, or a class's members and hypernyms."""
    split: str

    @property
    def feature_id(self) -> int:
        """A stable id (seeds the sampling), independent of list order and --limit."""
        return zlib.crc32(f"{self.kind}:{self.name}".encode()) & 0x7FFFFFFF


def _data(name: str) -> str:
    return resources.files("selfexplain.evaluation").joinpath("data", name).read_text()


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}: choose dev or test")


def load_words(split: str = "dev", limit: int | None = None) -> list[Concept]:
    """The word list of `split`, in its stored (seeded, POS-mixed) order; the first `limit`."""
    _check_split(split)
    out = []
    for line in _data(f"words_{split}.tsv").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        word, pos = line.split("\t")
        out.append(Concept(word, "word", pos, (word,), (word,), split))
    return out[:limit] if limit is not None else out


def load_classes(split: str = "dev", limit: int | None = None) -> list[Concept]:
    """Class concepts of `split` (animals, colours, ...)."""
    _check_split(split)
    out = []
    for entry in json.loads(_data("classes.json"))["classes"]:
        if entry["split"] != split:
            continue
        members = tuple(entry["members"])
        out.append(Concept(entry["name"], "class", None, members,
                           members + tuple(entry["hypernyms"]), split))
    return out[:limit] if limit is not None else out


def words(*names: str, pos: str | None = None) -> list[Concept]:
    """Ad-hoc word concepts (e.g. for a quick check); split `adhoc`."""
    return [Concept(n.strip(), "word", pos, (n.strip(),), (n.strip(),), "adhoc") for n in names]


class _Stop(Exception):
    """Raised by a hook once the wanted layer is reached: later blocks are not run."""


@torch.inference_mode()
def batched_word_residuals(lm: LoadedModel, words: list[str], layer: int) -> Tensor:
    """The same vectors as `vectors.word_residuals` (residual entering `layer` at the word's last
    token in WORD_CONTEXT), batched by token length and stopping at `layer`: (n, d_model)."""
    encoded = [lm.tokenizer(WORD_CONTEXT.format(word=w), add_special_tokens=False).input_ids
               for w in words]
    out = torch.zeros(len(words), lm.d_model)
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        groups.setdefault(len(ids), []).append(i)
    seen: list[Tensor] = []

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.append(hidden[:, -1].detach().float().cpu())  # (batch, d_model)
        raise _Stop

    handle = lm.layers[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for rows in groups.values():
            for start in range(0, len(rows), 256):
                chunk = rows[start : start + 256]
                ids = torch.tensor([encoded[i] for i in chunk], device=lm.device)
                seen.clear()
                try:
                    lm.model(input_ids=ids, use_cache=False, logits_to_keep=1)
                except _Stop:
                    pass
                out[chunk] = seen[0]
    finally:
        handle.remove()
    return out


_MEAN: dict[tuple[int, int], Tensor] = {}


def planted_directions(lm: LoadedModel, words: list[str], layer: int) -> Tensor:
    """Batched equivalent of `vectors.word_directions`: mean-free unit directions (n, d_model)."""
    key = (id(lm.model), layer)
    if key not in _MEAN:
        _MEAN[key] = batched_word_residuals(lm, list(REFERENCE_WORDS), layer).mean(dim=0)
    directions = batched_word_residuals(lm, words, layer) - _MEAN[key]
    return directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def concept_directions(lm: LoadedModel, concepts: list[Concept], layer: int) -> Tensor:
    """Unit planted directions (n, d_model) at `layer`: a word's own, or its class's mean."""
    vocabulary = sorted({m for c in concepts for m in c.members})
    if not vocabulary:
        raise InputError("no concepts to plant")
    rows = planted_directions(lm, [" " + m for m in vocabulary], layer)  # (vocab, d_model)
    index = {m: i for i, m in enumerate(vocabulary)}
    out = []
    for concept in concepts:
        mean = rows[[index[m] for m in concept.members]].mean(dim=0)
        out.append(mean / mean.norm().clamp_min(1e-12))
    return torch.stack(out)
