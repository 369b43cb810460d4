"""Typical inputs: computed exactly on planted activations, shipped beside an SAE, and explained
instead of the decoder row with `direction="input"`; an SAE without them is refused at once."""

from __future__ import annotations

import hashlib

import pytest
import torch

from cli.cli import main
from selfexplain.config import ExplainConfig
from selfexplain.errors import InputError, SaeLoadError
from selfexplain.explain import SelfExplainer, explain_sae_features
from selfexplain.saes import TYPICAL_INPUTS_FILE
from selfexplain.statstore import load_sae
from selfexplain.feature_stats import typical_inputs, write_typical_inputs
from tests.conftest import write_sae_folder


def identity_sae(tmp_path, d: int = 4):
    """A ReLU SAE whose latent i reads coordinate i: its codes are relu(x)."""
    from sae_lens import SAE

    folder = write_sae_folder(tmp_path / "sae", d, d, decoder=torch.eye(d))
    return folder, SAE.load_from_disk(str(folder))


def test_typical_input_is_the_activation_weighted_mean_free_input(tmp_path):
    folder, sae = identity_sae(tmp_path)
    acts = torch.tensor([[2.0, 0.0, 0.0, 1.0],
                         [1.0, 0.0, 0.0, -1.0],
                         [0.0, 0.0, 0.0, 0.0],
                         [-3.0, 0.0, 0.0, 0.0]])
    inputs = typical_inputs(sae, acts, batch=3)  # batches split the rows: sums must add up
    mean = acts.mean(0)
    expected0 = (2 * (acts[0] - mean) + 1 * (acts[1] - mean)) / 3  # latent 0 fires on rows 0, 1
    assert torch.allclose(inputs[0], expected0, atol=1e-6)
    assert torch.allclose(inputs[3], acts[0] - mean, atol=1e-6)  # latent 3 fires on row 0 only
    assert torch.equal(inputs[1], torch.zeros(4))  # never fired: a zero row


def test_input_direction_is_explained_and_zero_rows_skipped(tmp_path, tiny_lm):
    folder = write_sae_folder(tmp_path / "sae", tiny_lm.d_model, 6)
    inputs = torch.randn(6, tiny_lm.d_model, generator=torch.Generator().manual_seed(3))
    inputs[2] = 0
    write_typical_inputs(inputs, folder)
    sae = load_sae(str(folder))
    assert torch.allclose(sae.inputs, inputs.half().float())
    config = ExplainConfig.from_preset("default", direction="input", max_new_tokens=3,
                                       samples_per_scale=1, top_scales=2)
    results, skipped = explain_sae_features(tiny_lm, sae, [0, 1, 2], config)
    assert [r.feature for r in results] == [0, 1]
    assert skipped[0].feature == 2 and "never fired" in skipped[0].reason
    # what is injected is the unit typical input: the same as explaining those vectors directly
    vectors = sae.inputs[:2] / sae.inputs[:2].norm(dim=-1, keepdim=True)
    direct = SelfExplainer(tiny_lm, config).explain(vectors, [0, 1])
    assert [r.label for r in results] == [r.label for r in direct]
    assert [r.max_selfsim for r in results] == [r.max_selfsim for r in direct]


def test_sae_without_inputs_is_refused_before_the_model(tmp_path, capsys):
    folder = write_sae_folder(tmp_path / "sae", 32, 6)
    with pytest.raises(InputError, match="no typical inputs yet: compute them with `selfexplain collect"):
        load_sae(str(folder)).unit_directions([0], "input")
    code = main(["explain", "--model", str(tmp_path / "no-model"), "--sae", str(folder),
                 "--features", "0", "--direction", "input"])
    assert code == 2  # the SAE is checked first: the missing model is never reached
    assert "selfexplain collect --sae" in capsys.readouterr().err


def test_inputs_of_another_sae_are_refused(tmp_path):
    folder = write_sae_folder(tmp_path / "sae", 32, 6)
    write_typical_inputs(torch.ones(5, 32), folder)
    with pytest.raises(SaeLoadError, match="belongs to another SAE"):
        load_sae(str(folder))
    (folder / TYPICAL_INPUTS_FILE).write_bytes(b"torn")
    with pytest.raises(SaeLoadError, match="cannot read"):
        load_sae(str(folder))


def test_auto_reads_typical_inputs_only_when_shipped(tmp_path):
    folder = write_sae_folder(tmp_path / "sae", 32, 6)
    plain = load_sae(str(folder))
    assert torch.equal(plain.unit_directions([1], "auto")[0], plain.unit_directions([1])[0])
    write_typical_inputs(torch.randn(6, 32), folder)
    shipped = load_sae(str(folder))
    assert torch.equal(shipped.unit_directions([1], "auto")[0],
                       shipped.unit_directions([1], "input")[0])
    assert ExplainConfig.from_preset("default").direction == "auto"
    assert ExplainConfig.from_preset("faithful").direction == "decoder"


def test_direction_leaves_the_decoder_hash_alone():
    decoder = ExplainConfig.from_preset("faithful")
    other = ExplainConfig.from_preset("faithful", direction="input")
    # a decoder-row run hashes as it did before the field existed: the field is left out
    neutral = {"direction", "precision", "repeat_max_new_tokens", "token_recovery", "adapter"}
    before = hashlib.sha256(decoder.model_dump_json(exclude=neutral).encode()).hexdigest()[:16]
    assert decoder.direction == "decoder" and decoder.settings_hash() == before
    assert decoder.settings_hash() != other.settings_hash()
    assert decoder.null_hash() == other.null_hash()  # random directions are not SAE latents
