"""SAE loading: sae-lens folders, raw safetensors, the registry with near-match suggestions."""

import json

import pytest
import torch
from safetensors.torch import save_file

from selfexplain.errors import InputError, SaeLoadError
from selfexplain.saes import resid_layer_of
from selfexplain.statstore import load_sae
from tests.conftest import write_sae_folder


def test_folder_loads_through_sae_lens(tmp_path):
    sae = load_sae(str(write_sae_folder(tmp_path / "s", 32, 16, hook_name="blocks.3.hook_resid_post")))
    assert (sae.d_sae, sae.d_model) == (16, 32)
    assert sae.hook_name == "blocks.3.hook_resid_post" and sae.resid_layer == 4
    directions, kept, skipped = sae.unit_directions([0, 5])
    assert kept == [0, 5] and not skipped
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(2))


def test_raw_safetensors_with_w_dec(tmp_path):
    path = tmp_path / "dirs.safetensors"
    save_file({"W_dec": torch.randn(6, 32)}, str(path))
    sae = load_sae(str(path))
    assert sae.d_sae == 6 and sae.resid_layer is None
    save_file({"other": torch.randn(6, 32)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(SaeLoadError, match="no tensor named W_dec"):
        load_sae(str(tmp_path / "bad.safetensors"))


def test_corrupt_files_are_refused(tmp_path):
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(SaeLoadError, match="corrupt"):
        load_sae(str(truncated))
    folder = write_sae_folder(tmp_path / "s", 32, 4)
    (folder / "cfg.json").write_text("{not json")
    with pytest.raises(SaeLoadError, match="not valid JSON"):
        load_sae(str(folder))
    with pytest.raises(SaeLoadError, match="not found"):
        load_sae(str(tmp_path / "missing.safetensors"))


def test_unknown_registry_names_suggest_near_matches():
    with pytest.raises(SaeLoadError, match="did you mean gemma-2b-res-jb"):
        load_sae("gemma-2b-res-j/blocks.6.hook_resid_post")
    with pytest.raises(SaeLoadError, match="did you mean blocks.6.hook_resid_post"):
        load_sae("gemma-2b-res-jb/blocks.6.hook_resid_pst")


def test_feature_indices_are_checked(tmp_path):
    sae = load_sae(str(write_sae_folder(tmp_path / "s", 32, 4)))
    with pytest.raises(InputError, match="out of range"):
        sae.unit_directions([4])
    with pytest.raises(InputError, match="empty"):
        sae.unit_directions([])
    with pytest.raises(InputError, match="repeats"):
        sae.unit_directions([1, 1])


def test_resid_layer_of_hook_names():
    assert resid_layer_of("blocks.6.hook_resid_post") == 7
    assert resid_layer_of("blocks.2.hook_resid_pre") == 2
    assert resid_layer_of(None) is None
