"""Train a TopK SAE on the residual entering one block of a model, and write a sae-lens folder.

No pretrained SAE can be downloaded here, so the default model ships with one trained by this
module: activations collected from a corpus, fed to the trainer (`sae_trainer`: plain PyTorch TopK
of Gao et al. 2024, unit-norm decoder, AuxK loss for dead latents, inputs scaled to unit mean
square per dimension during training and the scale folded back into the weights, so the saved SAE
reads raw residuals and its activations are residual norms), written atomically as a folder.
`train_sae_with_statistics` (what `train-sae` and the train-default-sae flow run) also writes the
feature statistics beside it, from the run's own held-out activations.
The import runs one way: this module uses the trainer, the trainer never this module.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from selfexplain.corpus import token_chunks
from selfexplain.errors import InputError, SelfExplainError
from selfexplain.saes import SAE_ID_KEY
from selfexplain.models import LoadedModel
from selfexplain.sae_trainer import (
    TopKSae,
    TrainSaeConfig,
    evaluate,
    train_in_memory,
    train_streaming,
)


class TrainReport(NamedTuple):
    """What the card reports about one training run."""

    layer: int
    hook_name: str
    train_tokens: int
    heldout_tokens: int
    variance_explained: float
    """1 - SSE / total variance of the held-out activations."""
    l0: float
    """Mean active latents per held-out token."""
    dead_fraction: float
    """Latents that never fire on the held-out activations."""
    collect_seconds: float
    train_seconds: float
    steps: int
    out_dir: str | None


def hook_name_for(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


class _StopForward(Exception):
    """Raised by the capture hook once the deepest wanted block is reached: skip the rest."""


@torch.inference_mode()
def collect_activations(lm: LoadedModel, windows: Tensor, layers: list[int], *,
                        batch: int = 16, desc: str = "collect",
                        dtype: str = "float32", progress: bool = True) -> dict[int, Tensor]:
    """Residuals entering each block in `layers` for every window, position 0 dropped.

    `dtype` "bfloat16" runs the model under CPU autocast (faster, slightly less exact).
    Returns {layer: (n_windows * (context - 1), d_model) float16}. The forward pass stops after the
    deepest wanted block, so early layers cost a fraction of a full pass.
    """
    for layer in layers:
        if not 0 <= layer < lm.n_layers:
            raise InputError(
                f"layer {layer} is out of range: {lm.model_id} has blocks 0..{lm.n_layers - 1}"
            )
    n, context = windows.shape
    out = {layer: torch.empty(n * (context - 1), lm.d_model, dtype=torch.float16) for layer in layers}
    captured: dict[int, Tensor] = {}
    deepest = max(layers)

    def make_hook(layer: int):
        def hook(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            captured[layer] = hidden[:, 1:].reshape(-1, hidden.shape[-1]).float()
            if layer == deepest:
                raise _StopForward
        return hook

    handles = [lm.layers[layer].register_forward_pre_hook(make_hook(layer), with_kwargs=True)
               for layer in layers]
    device = lm.device
    try:
        for start in tqdm(range(0, n, batch), desc=desc, unit="batch", leave=False,
                          disable=not progress):
            ids = windows[start:start + batch].to(device)
            autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
                        if dtype == "bfloat16" else nullcontext())
            try:
                with autocast:
                    lm.model(input_ids=ids, use_cache=False)
            except _StopForward:
                pass
            rows = slice(start * (context - 1), (start + ids.shape[0]) * (context - 1))
            for layer in layers:
                acts = captured.pop(layer)
                if not torch.isfinite(acts).all() or acts.abs().max() > 60_000:
                    raise InputError(
                        f"residuals entering block {layer} overflow float16 storage or are not "
                        "finite: this model's activations need a different layer"
                    )
                out[layer][rows] = acts.cpu().half()
    finally:
        for handle in handles:
            handle.remove()
    return out


def sae_config_dict(sae: TopKSae, *, hook_name: str, model_id: str, revision: str,
                    context: int, extra: dict[str, object]) -> dict[str, object]:
    """A sae-lens 6 TopK config (`metadata.sae_lens_version` set, so hook_name survives loading)."""
    try:
        version = metadata.version("sae-lens")
    except metadata.PackageNotFoundError:
        version = "6.54.12"
    return {
        "architecture": "topk",
        "d_in": int(sae.W_dec.shape[1]),
        "d_sae": int(sae.W_dec.shape[0]),
        "k": sae.k,
        "rescale_acts_by_decoder_norm": False,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": version,
            "sae_lens_training_version": None,
            "model_name": model_id,
            "model_revision": revision,
            "hook_name": hook_name,
            "hook_head_index": None,
            "context_size": context,
            "prepend_bos": False,
            "exclude_special_tokens": False,
            "dataset_path": "local corpus (selfexplain.corpus)",
            **extra,
        },
    }


def write_sae(sae: TopKSae, out_dir: Path, cfg: dict[str, object], *,
              overwrite: bool = False, extra_files: dict[str, bytes] | None = None) -> Path:
    """Write cfg.json + sae_weights.safetensors (float16) atomically: temp folder, then rename.

    On any error (a full disk included) the temp folder is removed and `out_dir` is untouched.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise InputError(f"{out_dir} already exists and is not empty: pass --overwrite or a new --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        tensors = {name: getattr(sae, name).detach().contiguous().half()
                   for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
        save_file(tensors, str(tmp / "sae_weights.safetensors"))
        (tmp / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        for path in tmp.iterdir():
            path.chmod(0o644)  # safetensors writes 0600; the folder is meant to be shared
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out_dir.exists():
            old.rename(out_dir)
        raise SelfExplainError(
            f"cannot write the SAE to {out_dir}: {err.strerror or err}; nothing was written "
            "(free disk space or choose another --out)"
        ) from None
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


@dataclass(frozen=True)
class TrainedSae:
    """Weights, the config dict written next to them, held-out activations and the report."""

    sae: TopKSae
    cfg: dict[str, object]
    heldout: Tensor  # (n_heldout, d_in) float16
    heldout_windows: Tensor  # (n_windows, context) int64; heldout row i = window i // (context-1)
    report: TrainReport


def trained_sae_id(config: TrainSaeConfig, train_tokens: int) -> str:
    """A readable id naming this training run's SAE version, e.g. `l2-w4096-k8-14.6M-e1-s0`:
    a retrain with other settings or data is another SAE to the warehouse (and to carry-over)."""
    return (f"l{config.layer}-w{config.width}-k{config.k}-{train_tokens / 1e6:.1f}M-"
            f"e{config.epochs}-s{config.seed}")


def check_out_dir(out_dir: Path, overwrite: bool = False) -> None:
    """The SAE folder to write: not a file, and empty or missing unless `overwrite`."""
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file: give a folder path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise InputError(f"{out_dir} already exists and is not empty: pass --overwrite or a new --out")


def train_sae(lm: LoadedModel, corpus_dir: Path, config: TrainSaeConfig,
              out_dir: Path | None = None, *, overwrite: bool = False,
              checkpoint_dir: Path | None = None,
              stop_after_chunks: int | None = None) -> TrainedSae | None:
    """Collect, train, evaluate on held-out documents, and (if `out_dir`) write the folder.

    Training streams chunks of activations (see `sae_trainer.train_streaming`); with
    `checkpoint_dir` it resumes from the state saved there. Returns None when `stop_after_chunks`
    ended the run early (the checkpoint holds it)."""
    if not 0 <= config.layer < lm.n_layers:
        raise InputError(
            f"layer {config.layer} is out of range: {lm.model_id} has blocks 0..{lm.n_layers - 1}"
        )
    if out_dir is not None:
        check_out_dir(out_dir, overwrite)
    per_window = config.context - 1
    split = token_chunks(
        corpus_dir, lm.tokenizer, context=config.context,
        train_windows=math.ceil(config.tokens / per_window),
        heldout_windows=math.ceil(config.heldout_tokens / per_window), seed=config.seed,
    )
    t0 = time.perf_counter()
    heldout = collect_activations(lm, split.heldout, [config.layer], batch=config.collect_batch,
                                  desc="collect held-out")[config.layer] if len(split.heldout) \
        else torch.empty(0, lm.d_model, dtype=torch.float16)
    heldout_seconds = time.perf_counter() - t0

    def collect(windows: Tensor) -> Tensor:
        return collect_activations(lm, windows, [config.layer], batch=config.collect_batch,
                                   desc="collect", dtype=config.collect_dtype)[config.layer]

    result = train_streaming(collect, split.train, config, checkpoint_dir=checkpoint_dir,
                             stop_after_chunks=stop_after_chunks)
    if result is None:
        return None
    return finish(lm, result.sae, heldout, split.heldout, config, out_dir,
                  train_tokens=result.tokens, steps=result.steps,
                  collect_seconds=result.collect_seconds + heldout_seconds,
                  train_seconds=result.train_seconds, overwrite=overwrite, sources=split.sources)


def fit_and_write(lm: LoadedModel, train_acts: Tensor, heldout: Tensor, heldout_windows: Tensor,
                  config: TrainSaeConfig, out_dir: Path | None, *, collect_seconds: float = 0.0,
                  overwrite: bool = False, sources: dict | None = None) -> TrainedSae:
    """Train on collected activations, evaluate, and write the folder (used by layer sweeps)."""
    if train_acts.shape[0] < config.batch_tokens:
        raise InputError(
            f"only {train_acts.shape[0]} training activations for batches of {config.batch_tokens}: "
            "lower --batch-tokens or add text to the corpus"
        )
    t1 = time.perf_counter()
    sae, steps = train_in_memory(train_acts, config)
    return finish(lm, sae, heldout, heldout_windows, config, out_dir,
                  train_tokens=int(train_acts.shape[0]), steps=steps,
                  collect_seconds=collect_seconds, train_seconds=time.perf_counter() - t1,
                  overwrite=overwrite, sources=sources)


def finish(lm: LoadedModel, sae: TopKSae, heldout: Tensor, heldout_windows: Tensor,
           config: TrainSaeConfig, out_dir: Path | None, *, train_tokens: int, steps: int,
           collect_seconds: float, train_seconds: float, overwrite: bool = False,
           sources: dict | None = None) -> TrainedSae:
    """Evaluate trained weights on the held-out activations and write the sae-lens folder."""
    variance, l0, dead = evaluate(sae, heldout)
    hook_name = hook_name_for(config.layer)
    report = TrainReport(
        layer=config.layer, hook_name=hook_name, train_tokens=train_tokens,
        heldout_tokens=int(heldout.shape[0]), variance_explained=variance, l0=l0,
        dead_fraction=dead, collect_seconds=round(collect_seconds, 1),
        train_seconds=round(train_seconds, 1), steps=steps,
        out_dir=None if out_dir is None else str(out_dir),
    )
    cfg = sae_config_dict(
        sae, hook_name=hook_name, model_id=lm.model_id, revision=lm.revision,
        context=config.context,
        extra={SAE_ID_KEY: trained_sae_id(config, train_tokens), "selfexplain_training": {
            "config": config.model_dump(),
            "report": {k: v for k, v in report._asdict().items() if k != "out_dir"},
            "sources": sources or {},
        }},
    )
    if out_dir is not None:
        write_sae(sae, out_dir, cfg, overwrite=overwrite)
    return TrainedSae(sae, cfg, heldout, heldout_windows, report)


class TrainOutcome(NamedTuple):
    """A finished training run: its report and where its statistics went."""

    report: dict[str, object]
    """`TrainReport`'s fields, with `single_token_fraction` (of the live latents) when the
    statistics were written."""
    stats_path: str | None
    """feature_stats.parquet beside the SAE (typical_inputs.safetensors next to it); None when
    none were written (not asked for, or no held-out documents)."""


def train_sae_with_statistics(lm: LoadedModel, corpus_dir: Path, config: TrainSaeConfig,
                              out_dir: Path, *, overwrite: bool = False,
                              checkpoint_dir: Path | None = None,
                              stop_after_chunks: int | None = None,
                              statistics: bool = True) -> TrainOutcome | None:
    """`train_sae` into `out_dir`, then the statistics that ship beside the SAE
    (feature_stats.parquet, typical_inputs.safetensors) from the run's own held-out documents and
    activations: nothing is collected twice. None when `stop_after_chunks` ended the run early."""
    from sae_lens import SAE

    from selfexplain.feature_stats import STATS_FILE, write_sae_statistics

    out_dir = Path(out_dir).expanduser()
    trained = train_sae(lm, corpus_dir, config, out_dir, overwrite=overwrite,
                        checkpoint_dir=checkpoint_dir, stop_after_chunks=stop_after_chunks)
    if trained is None:
        return None
    report = trained.report._asdict()
    if not statistics or trained.heldout.shape[0] == 0:
        return TrainOutcome(report, None)
    frame = write_sae_statistics(lm, SAE.load_from_disk(str(out_dir)), out_dir,
                                 trained.heldout_windows, trained.heldout)
    alive = frame.filter(frame["density"] > 0)
    report["single_token_fraction"] = float(alive["single_token"].mean()) if alive.height else 0.0
    return TrainOutcome(report, str(out_dir / STATS_FILE))
