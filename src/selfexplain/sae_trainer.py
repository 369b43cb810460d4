"""The SAE trainer: the training settings, the TopK SAE's weights (encode, decode, evaluate), the
optimiser, and a streamed, resumable training run over a token-window stream. `train_sae` feeds it
activations from a corpus and writes the result as a sae-lens folder; this module knows nothing of
models or files but its checkpoint.

`TopKTrainer` holds everything that changes during training (weights, Adam state, the learning-rate
step, how long each latent has been silent); `state_dict` / `load_state_dict` round-trip it exactly.
`train_streaming` collects activations chunk by chunk (memory stays at one chunk however many
tokens are asked for), trains on each chunk in a seeded order, and checkpoints after chunks, so a
run killed or spread over several sittings continues exactly where it stopped: a resumed run ends
with the same weights, bit for bit, as one that never stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor
from tqdm.auto import tqdm

from selfexplain.errors import InputError, SelfExplainError, build_validated

CHECKPOINT = "checkpoint.pt"


class TrainSaeConfig(BaseModel):
    """Every setting of one SAE training run (defaults: the embedded default SAE)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    layer: int = Field(2, ge=0)
    """Train on the residual entering this decoder block (sae-lens `blocks.L.hook_resid_pre`).
    Default 2: the block the engine injects at (see the default SAE's CARD.md for the comparison)."""
    width: int = Field(4096, ge=1)
    """Number of latents (d_sae)."""
    k: int = Field(8, ge=1)
    """Active latents per token. Default 8: on 2M tokens, k 32 / 16 / 8 gave single-token features
    whose decoder rows point at their token with median cosine .23 / .31 / .41 (scripts/sae_study.py)."""
    tokens: int = Field(20_000_000, ge=1)
    """Training activations (position 0 of every window is dropped: attention sink); capped by the
    corpus (the default corpus holds 14.6M)."""
    heldout_tokens: int = Field(100_000, ge=0)
    """Activations from held-out documents for variance explained, dead fraction and statistics."""
    context: int = Field(128, ge=2)
    """Tokens per window fed to the model."""
    batch_tokens: int = Field(1024, ge=1)
    """Activations per optimiser step. Small batches give more steps for the same CPU time: on
    SmolLM2 with 400k tokens, 1024 reached 76% variance explained where 4096 reached 66%."""
    epochs: int = Field(1, ge=1)
    lr: float | None = Field(None, gt=0)
    """Adam learning rate; None = 2e-4 * sqrt(16384 / width) (Gao et al.)."""
    auxk_alpha: float = Field(1 / 32, ge=0)
    dead_tokens: int = Field(200_000, ge=1)
    """A latent silent for this many training activations counts as dead for the AuxK loss."""
    collect_batch: int = Field(16, ge=1)
    """Windows per forward pass while collecting activations."""
    collect_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    """Matmul precision of the model while collecting *training* activations. bfloat16 autocast is
    about 2-3x faster on CPUs with AVX512-BF16 and moves the residuals by under 1e-4 of their
    variance; held-out activations (all reported numbers, statistics) always use float32."""
    chunk_windows: int = Field(2048, ge=1)
    """Windows collected at a time (2048 x 127 activations = 0.5 GiB in float16): memory stays at
    one chunk however many tokens are trained on; the chunk's activations are shuffled."""
    checkpoint_chunks: int = Field(4, ge=1)
    """With a checkpoint folder, save the full training state after every this many chunks."""
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> "TrainSaeConfig":
        if self.k > self.width:
            raise ValueError(f"k ({self.k}) must not exceed the width ({self.width})")
        return self

    @classmethod
    def build(cls, **values: object) -> "TrainSaeConfig":
        """Validate `values` (None means default); raise InputError with one clear line."""
        return build_validated(cls, values)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else 2e-4 * math.sqrt(16384 / self.width)


class TopKSae(NamedTuple):
    """Weights in sae-lens layout: encode relu(topk((x - b_dec) @ W_enc + b_enc)), decode z @ W_dec + b_dec."""

    W_enc: Tensor  # (d_in, d_sae)
    b_enc: Tensor  # (d_sae,)
    W_dec: Tensor  # (d_sae, d_in)
    b_dec: Tensor  # (d_in,)
    k: int


def encode(sae: TopKSae, x: Tensor) -> tuple[Tensor, Tensor]:
    """Top-k latents of `x` (batch, d_in): (values (batch, k) >= 0, indices (batch, k))."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc  # (batch, d_sae)
    values, indices = pre.topk(sae.k, dim=-1, sorted=False)
    return values.relu(), indices


def decode(sae: TopKSae, values: Tensor, indices: Tensor) -> Tensor:
    """Reconstruction (batch, d_in) from sparse codes: embedding_bag gathers only k decoder rows."""
    return F.embedding_bag(indices, sae.W_dec, per_sample_weights=values, mode="sum") + sae.b_dec


@torch.inference_mode()
def evaluate(sae: TopKSae, acts: Tensor, batch: int = 8192) -> tuple[float, float, float]:
    """(variance explained, L0, dead fraction) on `acts` (n, d_in)."""
    if acts.shape[0] == 0:
        return float("nan"), float("nan"), float("nan")
    mean = acts.float().mean(0)
    sse = total = active = 0.0
    fired = torch.zeros(sae.W_dec.shape[0], dtype=torch.bool)
    for start in range(0, acts.shape[0], batch):
        x = acts[start:start + batch].float()
        values, indices = encode(sae, x)
        sse += float((decode(sae, values, indices) - x).pow(2).sum())
        total += float((x - mean).pow(2).sum())
        active += float((values > 0).sum())
        fired[indices[values > 0]] = True
    return 1 - sse / total, active / acts.shape[0], 1 - float(fired.float().mean())


class TopKTrainer:
    """Adam on a TopK SAE (Gao et al. 2024): unit-norm decoder, AuxK for dead latents, linear decay.

    Inputs are divided by `scale` (unit mean square per dimension) inside; `weights()` folds it back
    so the saved SAE reads raw residuals. CPU-frugal: latents are *selected* with a bfloat16 matmul
    without gradient, then only the k chosen pre-activations are recomputed in float32 with
    gradient (a gather), so the backward pass touches k encoder rows per token, not all of them.
    """

    def __init__(self, config: TrainSaeConfig, d_in: int, total_steps: int,
                 sample: Tensor | None = None) -> None:
        """`sample`: (s, d_in) raw activations that set the input scale and the initial b_dec
        (None when a state dict will be loaded next)."""
        self.config = config
        generator = torch.Generator().manual_seed(config.seed)
        sample = torch.zeros(1, d_in) if sample is None else sample.float()
        self.scale = float(sample.pow(2).sum(-1).mean().div(d_in).sqrt()) or 1.0
        W_dec = torch.randn(config.width, d_in, generator=generator)
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        self.W_enc_t = W_dec.clone().requires_grad_()  # (width, d_in): encoder rows, init = decoder
        self.b_enc = torch.zeros(config.width, requires_grad=True)
        self.W_dec = W_dec.requires_grad_()  # (width, d_in)
        self.b_dec = (sample.mean(0) / self.scale).requires_grad_()  # (d_in,)
        self.params = [self.W_enc_t, self.b_enc, self.W_dec, self.b_dec]
        self.optimizer = torch.optim.Adam(self.params, lr=config.learning_rate, eps=6.25e-10)
        self.total_steps = max(1, total_steps)
        decay_from = int(0.8 * self.total_steps)
        total = self.total_steps
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: 1.0 if s < decay_from else max(0.0, (total - s) / max(1, total - decay_from)),
        )
        self.silent = torch.zeros(config.width, dtype=torch.long)  # tokens since each latent fired
        self.steps = 0

    def step(self, raw: Tensor) -> tuple[float, int]:
        """One optimiser step on `raw` (batch, d_in) activations; returns (FVU, dead latents)."""
        config = self.config
        x = raw.float() / self.scale
        centred = x - self.b_dec  # (batch, d_in)
        with torch.no_grad():
            pre = centred.bfloat16() @ self.W_enc_t.bfloat16().T + self.b_enc.bfloat16()
            indices = pre.topk(config.k, dim=-1, sorted=False).indices  # (batch, k)
        rows = F.embedding(indices, self.W_enc_t)  # (batch, k, d_in)
        values = (torch.einsum("bkd,bd->bk", rows, centred) + self.b_enc[indices]).relu()
        recon = F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum") \
            + self.b_dec
        fvu = (recon - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        loss = fvu
        fired = torch.zeros(config.width, dtype=torch.bool)
        fired[indices[values > 0]] = True
        self.silent += x.shape[0]
        self.silent[fired] = 0
        dead = torch.nonzero(self.silent > config.dead_tokens).squeeze(1)  # (n_dead,)
        if config.auxk_alpha > 0 and len(dead) > 0:
            loss = loss + config.auxk_alpha * _auxk_loss(
                centred, x - recon.detach(), dead, self.W_enc_t, self.b_enc, self.W_dec,
                k_aux=x.shape[1] // 2)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():  # keep decoder rows unit norm: drop the radial gradient part
            self.W_dec.grad -= (self.W_dec.grad * self.W_dec).sum(-1, keepdim=True) * self.W_dec
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.schedule.step()
        with torch.no_grad():
            self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        self.steps += 1
        return float(fvu.detach()), len(dead)

    @torch.no_grad()
    def weights(self) -> TopKSae:
        """The SAE for raw inputs: the input scale folded into the biases."""
        return TopKSae(
            W_enc=self.W_enc_t.detach().T.contiguous(),
            b_enc=self.b_enc.detach() * self.scale,
            W_dec=self.W_dec.detach().clone(),
            b_dec=self.b_dec.detach() * self.scale,
            k=self.config.k,
        )

    def state_dict(self) -> dict[str, object]:
        return {
            "params": [p.detach().clone() for p in self.params],
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "silent": self.silent.clone(),
            "scale": self.scale,
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        with torch.no_grad():
            for param, saved in zip(self.params, state["params"], strict=True):  # type: ignore[arg-type]
                param.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        self.schedule.load_state_dict(state["schedule"])  # type: ignore[arg-type]
        self.silent = state["silent"].clone()  # type: ignore[union-attr]
        self.scale = float(state["scale"])  # type: ignore[arg-type]
        self.steps = int(state["steps"])  # type: ignore[arg-type]


def _auxk_loss(centred: Tensor, residual: Tensor, dead: Tensor, W_enc_t: Tensor, b_enc: Tensor,
               W_dec: Tensor, *, k_aux: int) -> Tensor:
    """AuxK (Gao et al.): the top dead latents should explain the main reconstruction's residual."""
    pre = centred @ W_enc_t[dead].T + b_enc[dead]  # (batch, n_dead)
    with torch.no_grad():  # dense over the dead: the backward pass is matmuls (a gather with
        # embedding_bag over k_aux = 288 rows per token was 1.6x slower for the same gradients)
        local = pre.topk(min(k_aux, len(dead)), dim=-1, sorted=False).indices
        keep = torch.zeros_like(pre).scatter_(1, local, 1.0)  # (batch, n_dead) 0/1
    aux = (pre.relu() * keep) @ W_dec[dead]  # (batch, d_in)
    loss = (aux - residual).pow(2).sum() / (residual - residual.mean(0)).pow(2).sum()
    return torch.nan_to_num(loss, nan=0.0)


def train_in_memory(acts: Tensor, config: TrainSaeConfig) -> tuple[TopKSae, int]:
    """Train on collected activations `acts` (n, d_in) for `config.epochs` shuffled passes."""
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    n = acts.shape[0]
    sample = acts[torch.randperm(n, generator=generator)[:65536]]
    steps_per_epoch = max(1, n // config.batch_tokens)
    trainer = TopKTrainer(config, acts.shape[1], steps_per_epoch * config.epochs, sample)
    bar = tqdm(total=trainer.total_steps, desc=f"train layer {config.layer}", unit="step",
               leave=False)
    for _epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        for i in range(steps_per_epoch):
            fvu, dead = trainer.step(acts[order[i * config.batch_tokens:(i + 1) * config.batch_tokens]])
            bar.update()
            if trainer.steps % 10 == 0:
                bar.set_postfix(fvu=f"{fvu:.3f}", dead=dead)
    bar.close()
    return trainer.weights(), trainer.steps


class StreamResult(NamedTuple):
    """What a streamed run produced."""

    sae: TopKSae
    steps: int
    tokens: int
    """Distinct training activations (each used once per epoch)."""
    collect_seconds: float
    train_seconds: float
    resumed_from_chunk: int
    """0 for a fresh run; otherwise the chunk the run continued from."""


def windows_digest(windows: Tensor) -> str:
    """Fingerprint of the token stream, so a checkpoint is never resumed on other data."""
    return hashlib.sha256(windows.to(torch.int32).contiguous().numpy().tobytes()).hexdigest()[:16]


def train_streaming(
    collect: Callable[[Tensor], Tensor],
    windows: Tensor,
    config: TrainSaeConfig,
    *,
    checkpoint_dir: Path | None = None,
    stop_after_chunks: int | None = None,
) -> StreamResult | None:
    """Train on the activations of `windows` (n, context), collected chunk by chunk by `collect`.

    `collect(windows) -> (n * (context - 1), d_in)` activations. Each epoch walks the windows in a
    seeded order, `config.chunk_windows` at a time; a chunk's activations are shuffled (seeded by
    epoch and chunk) and cut into batches; the few left over carry into the next chunk. With
    `checkpoint_dir` the full state is written there (atomically) after every
    `config.checkpoint_chunks` chunks and read back on the next call with the same config and
    windows. `stop_after_chunks` ends the call early (returns None): a planned interruption.
    """
    per_window = windows.shape[1] - 1
    distinct = min(config.tokens, len(windows) * per_window)  # activations per epoch
    total_tokens = distinct * config.epochs
    total_steps = total_tokens // config.batch_tokens
    if total_steps == 0:
        raise InputError(
            f"only {total_tokens} training activations for batches of {config.batch_tokens}: "
            "lower --batch-tokens or add text to the corpus"
        )
    n_windows = -(-distinct // per_window)
    chunks_per_epoch = -(-n_windows // config.chunk_windows)
    digest = windows_digest(windows[:n_windows])
    identity = {"config": config.model_dump(), "windows": digest}
    path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT

    state = _load_checkpoint(path, identity)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    orders = [torch.randperm(n_windows, generator=generator) for _ in range(config.epochs)]
    started = time.perf_counter()
    if state is None:
        first = collect(windows[orders[0][: config.chunk_windows]])
        sample = first[torch.randperm(len(first), generator=generator)[:65536]]
        trainer = TopKTrainer(config, first.shape[1], total_steps, sample)
        chunk, leftover, tokens = 0, first[:0], 0
        collect_seconds, train_seconds = time.perf_counter() - started, 0.0
    else:
        trainer = TopKTrainer(config, state["d_in"], total_steps)
        trainer.load_state_dict(state["trainer"])
        chunk, leftover, tokens = state["chunk"], state["leftover"], state["tokens"]
        collect_seconds, train_seconds = state["collect_seconds"], state["train_seconds"]
        first = None
    resumed_from = chunk
    bar = tqdm(total=total_steps * config.batch_tokens, initial=trainer.steps * config.batch_tokens,
               desc=f"train layer {config.layer}", unit="tok", unit_scale=True, leave=False,
               smoothing=0.05)
    done_here = 0
    while chunk < chunks_per_epoch * config.epochs and trainer.steps < total_steps:
        epoch, index = divmod(chunk, chunks_per_epoch)
        t0 = time.perf_counter()
        if first is not None and chunk == 0:
            acts = first
        else:
            acts = collect(windows[orders[epoch][index * config.chunk_windows:
                                                 (index + 1) * config.chunk_windows]])
        first = None
        t1 = time.perf_counter()
        if epoch == config.epochs - 1 and index == chunks_per_epoch - 1:
            acts = acts[: max(0, total_tokens - tokens - len(leftover))]  # the last window's excess
        chunk_gen = torch.Generator().manual_seed(config.seed * 1_000_003 + chunk)
        acts = torch.cat([leftover, acts[torch.randperm(len(acts), generator=chunk_gen)]])
        n_batches = len(acts) // config.batch_tokens
        for b in range(n_batches):
            if trainer.steps >= total_steps:
                break
            fvu, dead = trainer.step(acts[b * config.batch_tokens:(b + 1) * config.batch_tokens])
            bar.update(config.batch_tokens)
            if trainer.steps % 20 == 0:
                bar.set_postfix(fvu=f"{fvu:.3f}", dead=dead, chunk=f"{chunk + 1}/"
                                f"{chunks_per_epoch * config.epochs}")
        leftover = acts[n_batches * config.batch_tokens:].clone()
        tokens += n_batches * config.batch_tokens
        chunk += 1
        done_here += 1
        collect_seconds += t1 - t0
        train_seconds += time.perf_counter() - t1
        if path is not None and (chunk % config.checkpoint_chunks == 0
                                 or (stop_after_chunks is not None and done_here >= stop_after_chunks)):
            _save_checkpoint(path, {
                "identity": identity, "trainer": trainer.state_dict(), "chunk": chunk,
                "leftover": leftover, "tokens": tokens, "collect_seconds": collect_seconds,
                "train_seconds": train_seconds, "d_in": acts.shape[1],
            })
        if stop_after_chunks is not None and done_here >= stop_after_chunks:
            bar.close()
            return None
    bar.close()
    return StreamResult(trainer.weights(), trainer.steps, distinct, round(collect_seconds, 1),
                        round(train_seconds, 1), resumed_from)


def _load_checkpoint(path: Path | None, identity: dict[str, object]) -> dict | None:
    if path is None or not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a torn or foreign file: say so rather than start over silently
        raise SelfExplainError(
            f"cannot read the training checkpoint {path}: {type(err).__name__}; delete it to start "
            "over"
        ) from None
    if state.get("identity") != identity:
        saved = state.get("identity", {})
        what = ("the same settings but another token stream (corpus or seed)"
                if saved.get("config") == identity["config"] else "other settings")
        raise InputError(
            f"the checkpoint {path} was written by a run with {what}: resume with the same "
            "command, or delete the checkpoint folder to start over"
        )
    return state


def _save_checkpoint(path: Path, state: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise SelfExplainError(f"cannot write the training checkpoint {path}: "
                               f"{err.strerror or err}") from None


def describe_checkpoint(path: Path) -> str:
    """One line about a checkpoint folder (for the CLI's resume message)."""
    state = torch.load(Path(path) / CHECKPOINT, map_location="cpu", weights_only=False)
    return json.dumps({"chunk": state["chunk"], "tokens": state["tokens"],
                       "steps": state["trainer"]["steps"]})
