"""Load and validate the SAE once; hand on its ids and shape, never its weights."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from selfexplain.saes import DEFAULT_SAE
from tasks.cache import cached_sae, cached_scorer
from tasks.request import SaeInfo
from tasks.retry import retry_transient


def source_of(spec: str) -> tuple[str, str | None]:
    """(source, path) of an SAE spec: default, local folder, file, or registry id."""
    if spec == DEFAULT_SAE:
        return "default", None
    path = Path(spec).expanduser()
    if path.is_dir():
        return "local", str(path.resolve())
    if spec.endswith(".safetensors"):
        return "file", str(path.resolve())
    return "registry", None


def sae_info(spec: str) -> SaeInfo:
    sae = cached_sae(spec)
    source, path = source_of(spec)
    return SaeInfo(spec=spec, release=sae.release, sae_id=sae.sae_id, source=source,
                   d_sae=sae.d_sae, d_model=sae.d_model, hook_name=sae.hook_name,
                   resid_layer=sae.resid_layer, model_id=sae.model_id, path=path,
                   typical_inputs=None if sae.inputs is None else sae.injected("input"),
                   stats_dir=sae.stats_dir)


@task(name="load-sae", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5,
      retry_condition_fn=retry_transient)
def load_sae_info(spec: str) -> SaeInfo:
    """Load the SAE (validates its files) and return its ids and shape."""
    return sae_info(spec)



@task(name="sae-feature-stats", cache_policy=NO_CACHE, persist_result=False)
def sae_feature_stats(spec: str, release: str, sae_id: str, features: list[int]):
    """The SAE's activation statistics (shipped or collected: `statstore`) as `feature_stats`
    rows for `features`, so v_feature_labels shows `fires_on`; None when there are none."""
    import polars as pl

    from selfexplain.saes import sae_folder
    from selfexplain.feature_stats import warehouse_rows
    from selfexplain.statstore import load_stats_frame

    frame = load_stats_frame(cached_sae(spec), sae_folder(spec))
    if frame is None:
        return None
    rows = warehouse_rows(frame, release=release, sae_id=sae_id)
    return rows.filter(pl.col("feature").is_in(features))


@task(name="collect-stats", cache_policy=NO_CACHE, persist_result=False, retries=0)
def collect_stats(spec: str, model: str, corpus: str, tokens: int, device: str = "auto") -> str:
    """Compute the SAE's statistics (`selfexplain collect`) into the cache; returns the folder.
    Resumes a killed collect; reuses a finished one."""
    from selfexplain.collect import CollectConfig
    from selfexplain.statstore import collect_statistics
    from tasks.cache import cached_model

    lm = cached_model(model, "float32", device)
    last = {"logged": 0}
    log = get_run_logger()

    def progress(done: int, total: int, phase: str) -> None:
        last["logged"] += done
        if last["logged"] * 10 // total != (last["logged"] - done) * 10 // total:
            log.info(f"collect {phase}: {last['logged']:,} of {total:,} tokens")

    result = collect_statistics(lm, spec, corpus, CollectConfig(tokens=tokens), progress=progress)
    cached_sae.cache_clear()  # the next load attaches the new typical inputs
    cached_scorer.cache_clear()  # and scores against the new held-out examples
    m = result.manifest
    log.info(f"statistics of {m['release']}/{m['sae_id']}: {m['train_tokens']:,} training and "
             f"{m['heldout_tokens']:,} held-out tokens in {m['seconds']:.0f} s -> {result.folder}")
    return str(result.folder)
