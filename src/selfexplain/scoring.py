"""Held-out detection scores of labels: how well a label tells where its latent fires.

The field's detection scoring (EleutherAI's delphi; SAEBench's autointerp), on the held-out
examples `collect` keeps (documents disjoint from those that built the typical inputs and the
statistics). For a latent and its label:

- activating examples: the latent's uniform sample of the held-out examples it fires on (every
  activation decile in proportion; `collect.HeldoutSampler`);
- random negatives: examples of the random pool on which it does not fire;
- hard negatives: examples on which its nearest latents by decoder cosine fire and it does not
  (delphi's neighbour negatives: they share the surface the label must tell apart).

The embedding scorer ranks examples by the MiniLM cosine between the label and the example text;
its score is the AUROC of activating vs negative examples (0.5: the label says nothing; 1: it
separates them perfectly). Every count and choice is deterministic (hash order from collect).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from torch import Tensor

from selfexplain.errors import InputError

N_NEGATIVES = 64
"""Negatives of each kind per latent (the activating side is the latent's held-out sample, up to
collect's `heldout_per_latent`, 64 by default)."""
N_NEIGHBOURS = 8
"""Nearest latents by decoder cosine whose examples are hard negatives."""


@dataclass(frozen=True)
class HeldoutSet:
    """collect's held-out examples: texts, the latents firing in each, each latent's sample."""

    example_ids: list[int]
    texts: list[str]
    random: list[bool]
    fires: list[set[int]]  # per example row: latents firing in it
    samples: list[list[int]]  # per latent: example rows of its activating sample
    sample_maxes: list[list[float]]
    token_texts: list[list[str]] | None = None  # per example row: its tokens as text
    sample_positions: list[list[list[int]]] | None = None  # per latent, per sampled example:
    # the token positions where it fires (collect format 2; None for older statistics)

    @classmethod
    def load(cls, folder: Path) -> "HeldoutSet":
        from selfexplain.statstore import HELDOUT_EXAMPLES_FILE, HELDOUT_LATENTS_FILE

        folder = Path(folder)
        try:
            examples = pl.read_parquet(folder / HELDOUT_EXAMPLES_FILE)
            latents = pl.read_parquet(folder / HELDOUT_LATENTS_FILE).sort("feature")
        except (OSError, pl.exceptions.PolarsError) as err:
            raise InputError(f"no held-out examples in {folder} ({str(err)[:80]}): run "
                             "`selfexplain collect --sae ...`") from None
        ids = examples["example"].to_list()
        row = {e: i for i, e in enumerate(ids)}
        return cls(example_ids=ids, texts=examples["text"].to_list(),
                   random=examples["random"].to_list(),
                   fires=[set(f) for f in examples["features"].to_list()],
                   samples=[[row[e] for e in s] for s in latents["examples"].to_list()],
                   sample_maxes=latents["max_activations"].to_list(),
                   token_texts=(examples["token_texts"].to_list()
                                if "token_texts" in examples.columns else None),
                   sample_positions=(latents["positions"].to_list()
                                     if "positions" in latents.columns else None))

    @property
    def d_sae(self) -> int:
        return len(self.samples)


def nearest_latents(decoder: Tensor, k: int = N_NEIGHBOURS, batch: int = 4096) -> Tensor:
    """(d_sae, k) the latents with the highest decoder cosine to each latent (itself excluded)."""
    unit = decoder.float() / decoder.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = min(k, unit.shape[0] - 1)
    out = []
    for start in range(0, unit.shape[0], batch):
        cos = unit[start:start + batch] @ unit.T  # (b, d_sae)
        cos[torch.arange(cos.shape[0]), torch.arange(start, start + cos.shape[0])] = -2.0
        out.append(cos.topk(k, dim=-1).indices)
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)


@dataclass(frozen=True)
class DetectionSet:
    feature: int
    activating: list[int]  # example rows
    random_negatives: list[int]
    hard_negatives: list[int]


def detection_set(held: HeldoutSet, feature: int, neighbours: Sequence[int], *,
                  n_negatives: int = N_NEGATIVES) -> DetectionSet:
    """The examples one latent's label is scored on (see the module docstring)."""
    activating = held.samples[feature]
    random_rows = [i for i, r in enumerate(held.random) if r and feature not in held.fires[i]]
    hard: list[int] = []
    seen = set(activating)
    per = max(1, -(-n_negatives // max(len(neighbours), 1)))
    for other in neighbours:  # nearest first, an equal share from each
        taken = 0
        for i in held.samples[int(other)]:
            if taken >= per or len(hard) >= n_negatives:
                break
            if i not in seen and feature not in held.fires[i]:
                hard.append(i)
                seen.add(i)
                taken += 1
    return DetectionSet(feature, list(activating), random_rows[:n_negatives], hard)


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """`evaluation.stats.auroc` (ties half), None instead of NaN when either side is empty: a
    missing score is stored as NULL."""
    from selfexplain.evaluation.stats import auroc as mann_whitney

    if not positives or not negatives:
        return None
    return mann_whitney(positives, negatives)


class EmbeddingScorer:
    """Detection AUROC of labels by MiniLM similarity; example embeddings computed once."""

    def __init__(self, held: HeldoutSet, decoder: Tensor,
                 embed: Callable[[Sequence[str]], Tensor] | None = None,
                 cache: Path | None = None):
        """`cache`: a file where the example embeddings are kept (computed once per collect)."""
        if decoder.shape[0] != held.d_sae:
            raise InputError(f"the held-out examples are of an SAE with {held.d_sae} latents, "
                             f"not {decoder.shape[0]}: collect this SAE's statistics")
        if embed is None:
            from selfexplain.evaluation.real import Embedder

            embed = Embedder()
        self.held, self.embed = held, embed
        self.neighbours = nearest_latents(decoder).tolist()
        self._examples: Tensor | None = None
        self.cache = cache

    @property
    def example_vectors(self) -> Tensor:
        if self._examples is None and self.cache is not None and self.cache.is_file():
            from safetensors.torch import load_file

            try:
                vectors = load_file(str(self.cache))["examples"].float()
                if vectors.shape[0] == len(self.held.texts):
                    self._examples = vectors
            except Exception:  # a torn cache file: embed again
                pass
        if self._examples is None:
            self._examples = self.embed(self.held.texts)  # (n_examples, dim)
            if self.cache is not None:
                from safetensors.torch import save_file

                partial = self.cache.with_name(self.cache.name + ".partial")
                try:
                    save_file({"examples": self._examples.half().contiguous()}, str(partial))
                    partial.chmod(0o644)  # safetensors writes 0600; statistics are shared
                    partial.replace(self.cache)
                except OSError:  # a read-only statistics folder: embed each time
                    partial.unlink(missing_ok=True)
        return self._examples

    def score(self, features: Sequence[int], labels: Sequence[str | None]) -> pl.DataFrame:
        """Per (feature, label): detection AUROC with random and with hard negatives."""
        rows = []
        present = [i for i, label in enumerate(labels) if label and label.strip()]
        label_vecs = self.embed([labels[i] for i in present]) if present else None
        vec_of = {i: label_vecs[j] for j, i in enumerate(present)} if present else {}
        examples = self.example_vectors if present else None
        for i, feature in enumerate(features):
            sets = detection_set(self.held, int(feature), self.neighbours[int(feature)])
            random_auc = hard_auc = None
            if i in vec_of:
                sims = (examples @ vec_of[i]).tolist()  # (n_examples,)
                pos = [sims[r] for r in sets.activating]
                random_auc = auroc(pos, [sims[r] for r in sets.random_negatives])
                hard_auc = auroc(pos, [sims[r] for r in sets.hard_negatives])
            rows.append(dict(feature=int(feature), label=labels[i],
                             detection_auroc=random_auc, detection_auroc_hard=hard_auc,
                             n_activating=len(sets.activating),
                             n_random=len(sets.random_negatives), n_hard=len(sets.hard_negatives)))
        return pl.DataFrame(rows, schema=SCORE_SCHEMA, orient="row")


EMBEDDINGS_FILE = "heldout_embeddings.safetensors"
"""MiniLM embeddings of the held-out examples, cached beside them."""


def scorer_for(stats_dir: str | Path, decoder: Tensor, embed=None) -> EmbeddingScorer:
    """The embedding scorer over a statistics folder's held-out examples."""
    folder = Path(stats_dir)
    return EmbeddingScorer(HeldoutSet.load(folder), decoder, embed, cache=folder / EMBEDDINGS_FILE)


SCORE_SCHEMA = {"feature": pl.Int64, "label": pl.String, "detection_auroc": pl.Float64,
                "detection_auroc_hard": pl.Float64, "n_activating": pl.Int64,
                "n_random": pl.Int64, "n_hard": pl.Int64}


# -- LLM detection (delphi's detection scorer) against a judge endpoint ----------------------------

DETECTION_SYSTEM = "You are a careful judge of descriptions of neural network features."
DETECTION_PROMPT = (
    "A feature of a language model is described as:\n{label}\n\n"
    "Below are {n} text excerpts. For each one, decide whether the feature is active somewhere "
    "in it, judging only by the description.\n\n{examples}\n\n"
    "Answer with a list of {n} numbers in order, 1 for active and 0 for not, e.g. "
    "[{example}], and nothing else."
)
PER_DECILE = 1
"""Activating examples per activation decile of the latent's sample (delphi samples across
quantiles: a label must cover weak activations too, not only the top ones)."""
N_JUDGE_NEGATIVES = 10
BATCH = 5
"""Examples per prompt (delphi's default batch size for detection is 5 to 10)."""


def decile_sample(rows: Sequence[int], maxes: Sequence[float], per_decile: int = PER_DECILE,
                  ) -> list[int]:
    """`per_decile` rows from each tenth of the sample ordered by max activation (weakest first);
    the sample is uniform, so its tenths are the activation deciles."""
    order = sorted(range(len(rows)), key=lambda i: (maxes[i], i))
    picked: list[int] = []
    for d in range(10):
        part = order[len(order) * d // 10: len(order) * (d + 1) // 10]
        picked.extend(rows[i] for i in part[:per_decile])
    return picked


def parse_votes(answer: str, n: int) -> list[int] | None:
    """`[1, 0, 1]` (or `1 0 1`) -> [1, 0, 1]; None unless exactly n votes of 0/1 are found."""
    import re

    votes = [int(v) for v in re.findall(r"(?<![0-9.])[01](?![0-9.])", answer)]
    return votes if len(votes) == n else None


def balanced_accuracy(truth: Sequence[bool], votes: Sequence[bool]) -> float | None:
    pos = [v for t, v in zip(truth, votes) if t]
    neg = [not v for t, v in zip(truth, votes) if not t]
    if not pos or not neg:
        return None
    return (sum(pos) / len(pos) + sum(neg) / len(neg)) / 2


class JudgeDetectionScorer:
    """Balanced accuracy of a judge telling activating from non-activating held-out examples
    given the label (random and hard negatives). Responses are cached by the judge."""

    def __init__(self, held: HeldoutSet, decoder: Tensor, judge, *, seed: int = 0):
        self.held, self.judge, self.seed = held, judge, seed
        self.neighbours = nearest_latents(decoder).tolist()

    prompt = DETECTION_PROMPT

    def _accuracy(self, label: str, positives: list, negatives: list) -> float | None:
        """Balanced accuracy of the judge's votes; items are example rows (detection) or
        (row, highlighted positions) pairs (fuzzing), rendered by `_show`."""
        import random

        if not positives or not negatives:
            return None
        items = [(r, True) for r in positives] + [(r, False) for r in negatives]
        random.Random(self.seed).shuffle(items)
        truth, votes = [], []
        for start in range(0, len(items), BATCH):
            batch = items[start:start + BATCH]
            shown = "\n".join(f"{i}. {self._show(r)!r}" for i, (r, _) in enumerate(batch, 1))
            messages = [{"role": "system", "content": DETECTION_SYSTEM},
                        {"role": "user", "content": self.prompt.format(
                            label=label, n=len(batch), examples=shown,
                            example=", ".join("1" if i % 2 == 0 else "0" for i in range(len(batch))))}]
            parsed = parse_votes(self.judge.complete(messages, max_tokens=4 * len(batch) + 8),
                                 len(batch))
            if parsed is None:  # an unreadable answer counts as no vote for the batch
                continue
            truth.extend(t for _, t in batch)
            votes.extend(bool(v) for v in parsed)
        return balanced_accuracy(truth, votes)

    def _show(self, item) -> str:
        return self.held.texts[item]

    def score(self, features: Sequence[int], labels: Sequence[str | None]) -> pl.DataFrame:
        rows = []
        for feature, label in zip(features, labels):
            sets = detection_set(self.held, int(feature), self.neighbours[int(feature)],
                                 n_negatives=N_JUDGE_NEGATIVES)
            positives = decile_sample(self.held.samples[int(feature)],
                                      self.held.sample_maxes[int(feature)])
            random_acc = hard_acc = None
            if label and label.strip():
                random_acc = self._accuracy(label, positives, sets.random_negatives)
                hard_acc = self._accuracy(label, positives, sets.hard_negatives)
            rows.append(dict(feature=int(feature), label=label, judge_detection=random_acc,
                             judge_detection_hard=hard_acc))
        return pl.DataFrame(rows, schema={"feature": pl.Int64, "label": pl.String,
                                          "judge_detection": pl.Float64,
                                          "judge_detection_hard": pl.Float64}, orient="row")


FUZZING_PROMPT = (
    "A feature of a language model is described as:\n{label}\n\n"
    "Below are {n} text excerpts in which some tokens are marked <<like this>>. For each one, "
    "decide whether the marked tokens are where a feature with that description would be "
    "active.\n\n{examples}\n\n"
    "Answer with a list of {n} numbers in order, 1 if the marking fits the description and 0 if "
    "not, e.g. [{example}], and nothing else."
)


class JudgeFuzzingScorer(JudgeDetectionScorer):
    """delphi's fuzzing: activating examples with the tokens where the latent fires marked
    (right) vs activating examples with as many other tokens marked and random examples with
    random tokens marked (wrong); balanced accuracy of the judge's votes."""

    prompt = FUZZING_PROMPT

    def _show(self, item) -> str:
        row, marked = item
        tokens = self.held.token_texts[row]
        return "".join(f"{t[:len(t) - len(t.lstrip())]}<<{t.lstrip()}>>" if i in marked else t
                       for i, t in enumerate(tokens))  # a leading space stays outside the mark

    def score(self, features: Sequence[int], labels: Sequence[str | None]) -> pl.DataFrame:
        import random

        if self.held.token_texts is None or self.held.sample_positions is None:
            raise InputError("these statistics predate per-token held-out activations: collect "
                             "them again (`selfexplain collect --force`) to score fuzzing")
        rows = []
        for feature, label in zip(features, labels):
            f = int(feature)
            sample = self.held.samples[f]
            positions = dict(zip(sample, self.held.sample_positions[f]))
            right_rows = decile_sample(sample, self.held.sample_maxes[f])
            rng = random.Random(self.seed * 7919 + f)
            right = [(r, set(positions[r])) for r in right_rows]
            wrong = []
            for r in [r for r in sample if r not in set(right_rows)][:len(right) // 2]:
                others = [i for i in range(len(self.held.token_texts[r])) if i not in positions[r]]
                k = min(len(positions[r]), len(others))
                if k:
                    wrong.append((r, set(rng.sample(others, k))))
            pool = [i for i, flag in enumerate(self.held.random)
                    if flag and f not in self.held.fires[i]]
            for r in pool[:len(right) - len(wrong)]:
                n_tokens = len(self.held.token_texts[r])
                wrong.append((r, set(rng.sample(range(n_tokens), min(2, n_tokens)))))
            accuracy = self._accuracy(label, right, wrong) if label and label.strip() else None
            rows.append(dict(feature=f, label=label, judge_fuzzing=accuracy))
        return pl.DataFrame(rows, schema={"feature": pl.Int64, "label": pl.String,
                                          "judge_fuzzing": pl.Float64}, orient="row")
