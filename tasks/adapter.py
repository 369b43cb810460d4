"""Train a self-interpretation adapter (`selfexplain.adapter_training`) as a Prefect task.

Ids and paths cross the task boundary, not tensors: the task loads the model (once per process)
and the SAE's statistics itself and returns the adapter's path and training record.
"""

from __future__ import annotations

import json

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE


@task(name="train-adapter", cache_policy=NO_CACHE, persist_result=False, retries=0)
def train_adapter_task(model: str, out: str, settings: dict, words: int = 1000,
                       sae: str | None = "default", latents: int = 250,
                       latent_source: str = "decoder", precision: str = "auto",
                       device: str = "auto") -> dict:
    """Train (or resume) the adapter of `model` at `settings["injection_layer"]` into `out`;
    returns {"path", "digest", "info"}. A killed run resumes from `<out>.state.pt`."""
    from selfexplain.adapter_training import AdapterTrainConfig, train_adapter, training_pairs
    from selfexplain.models import resolve_precision
    from selfexplain.statstore import load_stats_frame
    from tasks.cache import cached_model, cached_sae

    log = get_run_logger()
    config = AdapterTrainConfig(**settings)
    lm = cached_model(model, resolve_precision(precision, device), device)
    loaded = stats = None
    if sae is not None and latents:
        loaded = cached_sae(sae)
        stats = load_stats_frame(loaded)
        if stats is None:
            log.warning(f"SAE {sae} has no statistics (run collect first): training on words only")
    train_pairs, dev_pairs = training_pairs(lm, config.injection_layer, words=words, sae=loaded,
                                            stats=stats, latents=latents,
                                            latent_source=latent_source, seed=config.seed)

    def progress(step: int, loss: float) -> None:
        if step % 25 == 0 or step == config.steps:
            log.info(f"step {step}/{config.steps}: loss {loss:.3f}")

    adapter = train_adapter(lm, config, out, train_pairs=train_pairs, dev_pairs=dev_pairs,
                            progress=progress)
    info = json.loads(adapter.info)
    log.info(f"adapter {adapter.digest} -> {out}: DEV loss {info['dev_loss_identity']:.3f} -> "
             f"{info['dev_loss']:.3f}")
    return {"path": out, "digest": adapter.digest, "info": info}
