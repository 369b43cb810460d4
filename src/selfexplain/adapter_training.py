"""Training a self-interpretation adapter (`adapter.Adapter`) on vector-label pairs, model frozen.

Objective: the frozen model's likelihood of the right answer when the adapted vector is injected
at every placeholder of the meaning prompt (the label) and of the repeat prompt (the literal
token). Pairs come for free:
- vocabulary words: a word's own mean-free residual at the injection layer (the planted-concept
  direction of `vectors.word_directions`) and the word. The planted DEV and TEST words and their
  inflections are left out, so the planted suites stay unseen.
- SAE latents (TRAIN ids only, feature % 4 == 0): a single-token latent's unit decoder row (or
  typical input) and its top token.
The meaning prompt's target is the model's own answer when the literal word stands in the prompt
(`meaning_target="self"`, cut at its closing quote): the adapter learns to make a vector read as
its word does, which keeps answers descriptive instead of collapsing them onto the bare token;
`"word"` trains on the word itself. Scales are drawn from the engine's eligible grid.

Resumable: the whole state (parameters, optimiser, step, data order) is saved atomically every
`save_every` steps; a rerun with the same settings goes on from there.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from selfexplain.adapter import Adapter, check_adapter_path, identity, model_fingerprint
from selfexplain.errors import InputError
from selfexplain.explain import NORM_TEXTS
from selfexplain.forward import PrefixCache, residual_norm
from selfexplain.inject import replaced_at
from selfexplain.models import LoadedModel
from selfexplain.prompts import MEANING, REPEAT, Prompt, build_prompt, prompt_text

TRAIN_LATENT_MODULUS = 4
"""SAE latents with id % 4 == 0 are TRAIN, == 2 the adapter's DEV; odd ids (the real suite's
TEST) are never read."""

Progress = Callable[[int, float], None]


class AdapterTrainConfig(BaseModel):
    """Every setting of one adapter training run (its hash names the resume state)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    injection_layer: int = Field(2, ge=0)
    steps: int = Field(300, ge=1)
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(0.01, gt=0)
    """Adam's step size, in units of the residual norm for the bias (the gain: the same)."""
    scale_bias: bool = False
    """Also learn a bias linear in the relative scale (2 d_model + 1 parameters)."""
    train_gain: bool = True
    meaning_target: Literal["self", "word"] = "self"
    repeat_weight: float = Field(1.0, ge=0)
    """Weight of the repeat prompt's rows against the meaning prompt's."""
    scales: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
    """Relative scales (multiples of the residual norm) drawn for each row: the default preset's
    eligible metric scales when the shipped adapter was trained (stop 33 left 0.25 out of the
    preset; kept here, so `make train-adapter` still reproduces the shipped file)."""
    max_target_tokens: int = Field(12, ge=1)
    seed: int = 0
    save_every: int = Field(25, ge=1)

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TrainPair:
    """One vector and its answers: `label` under the meaning prompt, `token` under repeat."""

    direction: Tensor  # (d_model,) unit
    token: str
    """The literal token (no leading space)."""
    source: str
    """`word` or `latent:<id>` (for the record)."""


def corpus_words(corpus: str = "default", *, min_count: int = 3, documents: int = 4000,
                 ) -> set[str]:
    """Lower-case words seen at least `min_count` times as whole words in the corpus's TRAIN
    documents: keeps word pieces (`unve`, `thromb`) out of the vocabulary words."""
    import re
    from collections import Counter

    from selfexplain.documents import open_documents

    counts: Counter[str] = Counter()
    pattern = re.compile(r"(?<![A-Za-z])[a-z]{3,}(?![A-Za-z])")
    seen = 0
    for stream in open_documents(corpus).streams("train").values():
        for text in stream:
            counts.update(pattern.findall(text))
            seen += 1
            if seen >= documents:
                break
    return {word for word, count in counts.items() if count >= min_count}


def vocabulary_words(lm: LoadedModel, exclude: Sequence[str], *, limit: int, seed: int = 0,
                     known: set[str] | None = None) -> list[str]:
    """Whole lower-case words of 3+ letters that are one token with a leading space (and, given
    `known`, among those words), none of `exclude` or an inflection of one (the planted lists
    stay unseen): a seeded sample."""
    from selfexplain.evaluation.matching import base_forms

    banned: set[str] = set()
    for word in exclude:
        banned |= set(base_forms(word.lower()))
        banned.add(word.lower())
    words = []
    for token, _ in sorted(lm.tokenizer.get_vocab().items(), key=lambda item: item[1]):
        text = lm.tokenizer.convert_tokens_to_string([token])
        if not text.startswith(" "):
            continue
        word = text[1:]
        if len(word) < 3 or not word.isascii() or not word.isalpha() or not word.islower():
            continue
        if word in banned or set(base_forms(word)) & banned:
            continue
        if known is not None and word not in known:
            continue
        words.append(word)
    random.Random(seed).shuffle(words)
    return words[:limit]


def word_pairs(lm: LoadedModel, words: Sequence[str], layer: int) -> list[TrainPair]:
    """Each word's planted direction (its mean-free residual at `layer`) and the word."""
    from selfexplain.vectors import word_directions

    directions = word_directions(lm, [" " + w for w in words], layer)  # (n, d_model)
    return [TrainPair(directions[i], w, "word") for i, w in enumerate(words)]


def latent_pairs(directions: Tensor, features: Sequence[int], top_tokens: Sequence[str],
                 ) -> list[TrainPair]:
    """Single-token latents: unit rows (n, d_model) and their top tokens; a latent of an odd id
    (the real suite's TEST) is refused, so TEST never trains an adapter."""
    odd = [f for f in features if f % 2]
    if odd:
        raise InputError(f"latents {odd[:5]} have odd ids (TEST): train on even ids only")
    pairs = []
    for i, (feature, token) in enumerate(zip(features, top_tokens)):
        token = token.strip()
        if token and any(ch.isalnum() for ch in token):
            pairs.append(TrainPair(directions[i], token, f"latent:{feature}"))
    return pairs


def quoted(token: str) -> str:
    """A token as the answer that closes its prompt's opening quote."""
    return f'{token}"'


def meaning_targets(lm: LoadedModel, tokens: Sequence[str], mode: str, max_tokens: int,
                    cache: dict[str, str] | None = None) -> list[str]:
    """The meaning prompt's target per token: the model's own greedy answer with the literal
    token in the prompt, up to and including its closing quote (`self`), or `token"` (`word`).
    `cache` (token -> answer) is read and filled: generating is most of a run's set-up."""
    if mode == "word":
        return [quoted(t) for t in tokens]
    out: dict[str, str] = cache if cache is not None else {}
    unique = sorted(set(tokens) - set(out))
    tokenizer = lm.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for start in range(0, len(unique), 32):
        chunk = unique[start : start + 32]
        encoded = []
        for token in chunk:
            text, add = prompt_text(tokenizer, lm.family, MEANING, token)
            encoded.append(tokenizer(text, add_special_tokens=add).input_ids)
        width = max(len(ids) for ids in encoded)
        # left padding: every row's answer starts at the same position
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
        with torch.inference_mode():
            generated = lm.model.generate(input_ids=ids.to(lm.device),
                                          attention_mask=mask.to(lm.device),
                                          max_new_tokens=max_tokens, do_sample=False,
                                          pad_token_id=pad)
        for token, row in zip(chunk, generated[:, width:].tolist()):
            text = tokenizer.decode(row, skip_special_tokens=True)
            cut = text.split('"')[0].split("\n")[0].strip()
            out[token] = (cut or token) + '"'
    return [out[t] for t in tokens]


@dataclass
class _Rows:
    prompt: Prompt
    prefix: PrefixCache
    targets: list[list[int]]  # per pair: target token ids


def _encode_targets(lm: LoadedModel, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    out = []
    for text in texts:
        ids = lm.tokenizer(text, add_special_tokens=False).input_ids[:max_tokens]
        out.append(ids or [lm.tokenizer.eos_token_id])
    return out


class _Parameters(torch.nn.Module):
    def __init__(self, d_model: int, scale_bias: bool) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(()))
        self.bias = torch.nn.Parameter(torch.zeros(d_model))  # in units of the residual norm
        self.scale_bias = torch.nn.Parameter(torch.zeros(d_model)) if scale_bias else None

    def adapter(self, unit: float, layer: int, fingerprint: str, info: str = "{}") -> Adapter:
        return Adapter(self.gain if self.gain.requires_grad else float(self.gain), self.bias * unit,
                       None if self.scale_bias is None else self.scale_bias * unit, layer,
                       fingerprint, unit, info)


def target_loss(lm: LoadedModel, rows: _Rows, pairs_index: Sequence[int], directions: Tensor,
                scales: Tensor, adapter: Adapter) -> Tensor:
    """Mean per-row NLL of the targets (pairs_index into rows.targets) with the adapted vectors
    injected; directions (batch, d_model) unit, scales (batch,) absolute."""
    prompt, prefix = rows.prompt, rows.prefix
    targets = [rows.targets[i] for i in pairs_index]
    batch = len(targets)
    suffix = prompt.input_ids[prefix.length :].tolist()
    width = max(len(t) for t in targets)
    pad = targets[0][0]
    ids = torch.tensor([suffix + t + [pad] * (width - len(t)) for t in targets])  # (batch, seq)
    positions = (prompt.placeholder_positions - prefix.length).to(lm.device)
    vectors = adapter.apply(scales, directions)  # (batch, d_model)
    cache = prefix.expanded(lm, batch) if prefix.length else None
    with replaced_at(lm.layers[adapter.injection_layer], positions, vectors):
        logits = lm.model(input_ids=ids.to(lm.device), past_key_values=cache,
                          use_cache=cache is not None).logits  # (batch, seq, vocab)
    start = len(suffix) - 1  # the last prompt token predicts the first target token
    predicted = logits[:, start : start + width].float()  # (batch, width, vocab)
    labels = torch.tensor([t + [-100] * (width - len(t)) for t in targets]).to(lm.device)
    nll = torch.nn.functional.cross_entropy(predicted.transpose(1, 2), labels, reduction="none",
                                            ignore_index=-100)  # (batch, width)
    lengths = (labels != -100).sum(dim=1).clamp_min(1)
    return (nll.sum(dim=1) / lengths).mean()


class Trainer:
    """Holds the prompts, targets and parameters of one training run."""

    def __init__(self, lm: LoadedModel, config: AdapterTrainConfig, pairs: Sequence[TrainPair],
                 dev_pairs: Sequence[TrainPair] = (), target_cache: dict[str, str] | None = None,
                 ) -> None:
        if not pairs:
            raise InputError("no training pairs: give words or single-token TRAIN latents")
        self.lm, self.config = lm, config
        self.target_cache = target_cache if target_cache is not None else {}
        for module in lm.model.parameters():
            module.requires_grad_(False)
        self.unit = residual_norm(lm, config.injection_layer, list(NORM_TEXTS))
        self.fingerprint = model_fingerprint(lm.model.get_input_embeddings().weight)
        self.pairs, self.dev_pairs = list(pairs), list(dev_pairs)
        self.rows = {kind: self._rows(kind, self.pairs) for kind in (MEANING, REPEAT)}
        self.dev_rows = ({kind: self._rows(kind, self.dev_pairs) for kind in (MEANING, REPEAT)}
                         if self.dev_pairs else None)
        self.params = _Parameters(lm.d_model, config.scale_bias)
        self.params.gain.requires_grad_(config.train_gain)
        trainable = [p for p in self.params.parameters() if p.requires_grad]
        self.optimiser = torch.optim.Adam(trainable, lr=config.learning_rate)
        self.step = 0
        self.losses: list[float] = []

    def _rows(self, kind: str, pairs: Sequence[TrainPair]) -> _Rows:
        prompt = build_prompt(self.lm.tokenizer, self.lm.family, kind)
        tokens = [p.token for p in pairs]
        if kind == MEANING:
            texts = meaning_targets(self.lm, tokens, self.config.meaning_target,
                                    self.config.max_target_tokens, self.target_cache)
        else:
            texts = [quoted(t) for t in tokens]
        return _Rows(prompt, PrefixCache(self.lm, prompt),
                     _encode_targets(self.lm, texts, self.config.max_target_tokens))

    def adapter(self, info: dict | None = None) -> Adapter:
        with torch.no_grad():
            detached = _Parameters(self.lm.d_model, self.config.scale_bias)
            detached.load_state_dict(self.params.state_dict())
        for p in detached.parameters():
            p.requires_grad_(False)
        return detached.adapter(self.unit, self.config.injection_layer, self.fingerprint,
                                json.dumps(info or {}, sort_keys=True))

    def _batch(self, step: int) -> tuple[str, list[int], Tensor]:
        config = self.config
        rng = random.Random(config.seed * 1_000_003 + step)
        kind = REPEAT if (config.repeat_weight > 0 and step % 2) else MEANING
        index = [rng.randrange(len(self.pairs)) for _ in range(config.batch_size)]
        scales = torch.tensor([rng.choice(config.scales) * self.unit for _ in index])
        return kind, index, scales

    def train_step(self) -> float:
        kind, index, scales = self._batch(self.step)
        directions = torch.stack([self.pairs[i].direction for i in index]).float()
        adapter = self.params.adapter(self.unit, self.config.injection_layer, self.fingerprint)
        loss = target_loss(self.lm, self.rows[kind], index, directions, scales, adapter)
        weight = self.config.repeat_weight if kind == REPEAT else 1.0
        self.optimiser.zero_grad()
        (loss * weight).backward()
        self.optimiser.step()
        self.step += 1
        value = loss.item()
        self.losses.append(value)
        return value

    @torch.no_grad()
    def dev_loss(self, adapter: Adapter | None = None) -> float | None:
        """Mean target NLL over the DEV pairs at every training scale (both prompts)."""
        if not self.dev_rows:
            return None
        adapter = adapter or self.adapter()
        total, count = 0.0, 0
        for kind, rows in self.dev_rows.items():
            for relative in self.config.scales[1::2]:
                for start in range(0, len(self.dev_pairs), 32):
                    index = list(range(start, min(start + 32, len(self.dev_pairs))))
                    directions = torch.stack([self.dev_pairs[i].direction for i in index]).float()
                    scales = torch.full((len(index),), relative * self.unit)
                    loss = target_loss(self.lm, rows, index, directions, scales, adapter)
                    total += float(loss) * len(index)
                    count += len(index)
        return total / max(count, 1)

    def state(self) -> dict:
        return {"config": self.config.digest(), "step": self.step, "losses": self.losses,
                "params": self.params.state_dict(), "optimiser": self.optimiser.state_dict()}

    def load_state(self, state: dict) -> None:
        if state.get("config") != self.config.digest():
            raise InputError("the resume state belongs to other settings: remove it or use them")
        self.params.load_state_dict(state["params"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.step, self.losses = int(state["step"]), list(state["losses"])


def train(trainer: Trainer, *, state_path: Path | None = None, progress: Progress | None = None,
          ) -> Adapter:
    """Run the remaining steps (resuming from `state_path` when it holds this run's state) and
    return the adapter with its training record in `info`."""
    config = trainer.config
    if state_path is not None and state_path.is_file():
        trainer.load_state(torch.load(state_path, map_location="cpu", weights_only=False))
    began = time.perf_counter()
    while trainer.step < config.steps:
        loss = trainer.train_step()
        if progress is not None:
            progress(trainer.step, loss)
        if state_path is not None and (trainer.step % config.save_every == 0
                                       or trainer.step == config.steps):
            _save_atomic(trainer.state(), state_path)
    dev_identity = trainer.dev_loss(identity(trainer.lm.d_model, config.injection_layer))
    dev = trainer.dev_loss()
    window = trainer.losses[-20:]
    info = {"settings": json.loads(config.model_dump_json()), "pairs": len(trainer.pairs),
            "sources": _count_sources(trainer.pairs), "dev_pairs": len(trainer.dev_pairs),
            "train_loss_first": _mean(trainer.losses[:20]), "train_loss_last": _mean(window),
            "dev_loss_identity": dev_identity, "dev_loss": dev,
            "seconds": round(time.perf_counter() - began, 1)}
    return trainer.adapter(info)


def _count_sources(pairs: Sequence[TrainPair]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for pair in pairs:
        key = pair.source.split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    return counts


def _mean(values: Sequence[float]) -> float | None:
    return None if not values else float(sum(values) / len(values))


def _save_atomic(state: dict, path: Path) -> None:
    from selfexplain.feature_stats import write_atomically

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda partial: torch.save(state, partial))


def latent_split_features(stats: object, split: str, *, single: bool = True,
                          limit: int | None = None, seed: int = 0) -> list[int]:
    """Live latents of the adapter's splits from a feature-stats frame: `train` (id % 4 == 0),
    `dev` (id % 4 == 2) or `test` (odd ids, the real suite's TEST); a seeded sample of `limit`."""
    import polars as pl

    part = pl.col("feature") % TRAIN_LATENT_MODULUS
    rule = {"train": part == 0, "dev": part == 2, "test": pl.col("feature") % 2 == 1}[split]
    frame = stats.filter(rule & (pl.col("single_token") == single)  # type: ignore[attr-defined]
                         & (pl.col("density") > 0))
    if limit is not None and frame.height > limit:
        frame = frame.sample(limit, seed=seed)
    return sorted(frame["feature"].to_list())


def training_pairs(lm: LoadedModel, layer: int, *, words: int = 1000, sae: object | None = None,
                   stats: object | None = None, latents: int = 250,
                   latent_source: str = "decoder", dev_size: int = 64, seed: int = 0,
                   corpus: str = "default") -> tuple[list[TrainPair], list[TrainPair]]:
    """TRAIN and DEV pairs: vocabulary words (planted DEV/TEST words and inflections left out;
    whole words of the corpus only) and, given an SAE with statistics, single-token latents of
    the TRAIN ids (DEV: ids % 4 == 2) by their `latent_source` rows (`decoder`, `input`, `both`)."""
    from selfexplain.evaluation.wordlists import load_words

    planted = [c.name for split in ("dev", "test") for c in load_words(split)]
    vocabulary = vocabulary_words(lm, planted, limit=words + dev_size, seed=seed,
                                  known=corpus_words(corpus))
    if len(vocabulary) < words + dev_size:
        raise InputError(f"only {len(vocabulary)} vocabulary words qualify; ask for fewer "
                         f"(--words {max(len(vocabulary) - dev_size, 0)})")
    train_pairs = word_pairs(lm, vocabulary[:words], layer) if words else []
    dev_pairs = word_pairs(lm, vocabulary[words:], layer) if dev_size else []
    if sae is not None and stats is not None and latents:
        top = dict(zip(stats["feature"].to_list(), stats["top_tokens"].to_list()))  # type: ignore[index]
        sources = ["decoder", "input"] if latent_source == "both" else [latent_source]
        for split, limit, into in (("train", latents, train_pairs), ("dev", dev_size, dev_pairs)):
            features = latent_split_features(stats, split, limit=limit, seed=seed)
            for source in sources:
                directions, kept, _ = sae.unit_directions(features, source)  # type: ignore[attr-defined]
                into.extend(latent_pairs(directions, kept, [top[f][0] for f in kept]))
    return train_pairs, dev_pairs


def train_adapter(lm: LoadedModel, config: AdapterTrainConfig, out: str | Path, *,
                  train_pairs: Sequence[TrainPair], dev_pairs: Sequence[TrainPair] = (),
                  progress: Progress | None = None) -> Adapter:
    """Train and write the adapter to `out`; resumable: the optimiser state goes to
    `<out>.state.pt` and the generated meaning targets to `<out>.targets.json` as it runs, and
    both are removed once the adapter is written."""
    from selfexplain.adapter import save_adapter

    out = check_adapter_path(out)
    state_path = out.with_name(out.name + ".state.pt")
    cache_path = out.with_name(out.name + ".targets.json")
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    trainer = Trainer(lm, config, train_pairs, dev_pairs, cache)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_text(json.dumps(cache))
    adapter = train(trainer, state_path=state_path, progress=progress)
    save_adapter(adapter, out)
    state_path.unlink(missing_ok=True)
    cache_path.unlink(missing_ok=True)
    return adapter
