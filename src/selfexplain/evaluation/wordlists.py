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
from selfexplain.vectors import word_directions

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


def concept_directions(lm: LoadedModel, concepts: list[Concept], layer: int) -> Tensor:
    """Unit planted directions (n, d_model) at `layer`: a word's own, or its class's mean."""
    vocabulary = sorted({m for c in concepts for m in c.members})
    if not vocabulary:
        raise InputError("no concepts to plant")
    rows = word_directions(lm, [" " + m for m in vocabulary], layer)  # (vocab, d_model)
    index = {m: i for i, m in enumerate(vocabulary)}
    out = []
    for concept in concepts:
        mean = rows[[index[m] for m in concept.members]].mean(dim=0)
        out.append(mean / mean.norm().clamp_min(1e-12))
    return torch.stack(out)
