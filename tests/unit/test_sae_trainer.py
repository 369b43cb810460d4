"""Streamed SAE training: chunks bound memory, checkpoints resume bit for bit, and a checkpoint is
never resumed on other settings or data."""

from __future__ import annotations

import pytest
import torch

from selfexplain.errors import InputError, SelfExplainError
from selfexplain.sae_trainer import CHECKPOINT, TrainSaeConfig, train_streaming
from selfexplain.train_sae import collect_activations


def config(**overrides) -> TrainSaeConfig:
    values = dict(layer=2, width=32, k=4, tokens=600, context=16, batch_tokens=64, epochs=2,
                  chunk_windows=10, checkpoint_chunks=1, seed=0, collect_dtype="float32")
    values.update(overrides)
    return TrainSaeConfig.build(**values)


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    return torch.randint(20, 90, (40, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def collect(tiny_lm):
    seen: list[int] = []

    def run(batch: torch.Tensor) -> torch.Tensor:
        seen.append(len(batch))
        return collect_activations(tiny_lm, batch, [2])[2]

    run.seen = seen  # type: ignore[attr-defined]
    return run


@pytest.fixture(scope="module")
def uninterrupted(collect, windows):
    return train_streaming(collect, windows, config())


def test_chunks_bound_what_is_collected_at_once(collect, uninterrupted):
    assert max(collect.seen) <= 10
    assert uninterrupted.steps == 600 * 2 // 64
    assert uninterrupted.tokens == 600


def test_interrupted_run_resumes_bit_for_bit(tmp_path, collect, windows, uninterrupted):
    assert train_streaming(collect, windows, config(), checkpoint_dir=tmp_path,
                           stop_after_chunks=3) is None
    assert (tmp_path / CHECKPOINT).exists()
    assert train_streaming(collect, windows, config(), checkpoint_dir=tmp_path,
                           stop_after_chunks=2) is None
    resumed = train_streaming(collect, windows, config(), checkpoint_dir=tmp_path)
    assert resumed.resumed_from_chunk == 5
    assert resumed.steps == uninterrupted.steps
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(resumed.sae, name), getattr(uninterrupted.sae, name)), name


def test_checkpoint_of_other_settings_or_data_is_refused(tmp_path, collect, windows):
    train_streaming(collect, windows, config(), checkpoint_dir=tmp_path, stop_after_chunks=1)
    with pytest.raises(InputError, match="other settings"):
        train_streaming(collect, windows, config(k=5), checkpoint_dir=tmp_path)
    with pytest.raises(InputError, match="another token stream"):
        train_streaming(collect, windows.flip(0), config(), checkpoint_dir=tmp_path)


def test_torn_checkpoint_says_so(tmp_path, collect, windows):
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(SelfExplainError, match="cannot read the training checkpoint.*delete it"):
        train_streaming(collect, windows, config(), checkpoint_dir=tmp_path)


def test_too_few_tokens_for_one_batch(collect, windows):
    with pytest.raises(InputError, match="lower --batch-tokens"):
        train_streaming(collect, windows[:2], config(batch_tokens=64, epochs=1, tokens=20))
