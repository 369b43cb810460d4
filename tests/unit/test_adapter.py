"""The self-interpretation adapter: identity changes nothing, training lowers the loss, files and
settings hashes, bad input."""

import json

import pytest
import torch

from selfexplain.adapter import (Adapter, identity, load_adapter, model_fingerprint,
                                 resolve_for_model, save_adapter)
from selfexplain.adapter_training import (AdapterTrainConfig, Trainer, TrainPair, latent_pairs,
                                          train)
from selfexplain.config import ExplainConfig
from selfexplain.errors import InputError
from selfexplain.explain import explain_directions


def _config(**overrides):
    base = dict(max_new_tokens=6, batch_rows=16, metric_scales=(0.0, 0.5, 1.0, 2.0), top_scales=2,
                samples_per_scale=2, min_scale=0.4)
    base.update(overrides)
    return ExplainConfig.from_preset("default", **base)


def _fingerprint(lm) -> str:
    return model_fingerprint(lm.model.get_input_embeddings().weight)


def _everything(results):
    """Every number and text the engine returns for a feature, for exact comparison."""
    return [(r.feature, r.failed, r.max_selfsim, r.max_roundtrip, r.recovered_token,
             [(c.prompt, c.text, c.scale, c.score, c.composite, c.rank, c.chosen,
               json.dumps(c.extra, sort_keys=True)) for c in r.candidates],
             [(s.selfsim, s.entropy, s.composite) for s in r.sweeps]) for r in results]


def test_identity_adapter_reproduces_the_engine_exactly(tiny_lm_any, tmp_path):
    lm = tiny_lm_any
    path = save_adapter(Adapter(1.0, torch.zeros(lm.d_model), torch.zeros(lm.d_model), 2,
                                _fingerprint(lm)), tmp_path / "identity.safetensors")
    directions = torch.randn(3, lm.d_model)
    plain = explain_directions(lm, directions, _config(), features=[1, 2, 3])
    adapted = explain_directions(lm, directions, _config(adapter=str(path)), features=[1, 2, 3])
    assert _everything(adapted) == _everything(plain)


def test_a_bias_changes_what_is_injected_and_scale_zero_injects_the_bias(tiny_lm, tmp_path):
    lm = tiny_lm
    bias = torch.randn(lm.d_model) * 3
    adapter = Adapter(0.5, bias, None, 2, _fingerprint(lm))
    scales = torch.tensor([0.0, 2.0])
    directions = torch.nn.functional.normalize(torch.randn(2, lm.d_model), dim=-1)
    injected = adapter.apply(scales, directions)
    assert torch.equal(injected[0], bias)
    assert torch.allclose(injected[1], 0.5 * 2.0 * directions[1] + bias)
    path = save_adapter(adapter, tmp_path / "a.safetensors")
    plain = explain_directions(lm, directions, _config(), features=[1, 2])
    adapted = explain_directions(lm, directions, _config(adapter=str(path)), features=[1, 2])
    assert _everything(adapted) != _everything(plain)


def _sharp_tiny_model():
    """A tiny Llama whose output depends on its residual: a random tiny model's logits are nearly
    uniform (std 0.1), so no injected vector could move its loss."""
    from tests.conftest import build_tiny_model

    lm = build_tiny_model("llama", seed=3)
    with torch.no_grad():
        lm.model.lm_head.weight.mul_(40)
    return lm


def test_training_lowers_the_loss_and_keeps_the_model_frozen():
    lm = _sharp_tiny_model()
    before = {name: p.clone() for name, p in lm.model.named_parameters()}
    torch.manual_seed(0)
    tokens = ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op"]
    directions = torch.nn.functional.normalize(torch.randn(len(tokens), lm.d_model), dim=-1)
    pairs = [TrainPair(directions[i], t, "word") for i, t in enumerate(tokens)]
    config = AdapterTrainConfig(steps=30, batch_size=8, learning_rate=0.05, meaning_target="word",
                                scales=(0.5, 1.0))
    adapter = train(Trainer(lm, config, pairs, dev_pairs=pairs[:4]))
    info = json.loads(adapter.info)
    # measured: 11.63 -> 11.14 nats
    assert info["dev_loss"] < info["dev_loss_identity"] - 0.3
    assert not adapter.is_identity and adapter.model_fingerprint == _fingerprint(lm)
    assert all(torch.equal(p, before[name]) for name, p in lm.model.named_parameters())


def test_training_resumes_where_it_stopped(tiny_lm, tmp_path):
    lm = tiny_lm
    torch.manual_seed(1)
    directions = torch.nn.functional.normalize(torch.randn(4, lm.d_model), dim=-1)
    pairs = [TrainPair(directions[i], t, "word") for i, t in enumerate(["ab", "cd", "ef", "gh"])]
    config = AdapterTrainConfig(steps=12, batch_size=4, meaning_target="word", scales=(1.0,),
                                save_every=4)
    whole = train(Trainer(lm, config, pairs))
    state = tmp_path / "state.pt"
    first = Trainer(lm, config.model_copy(update={"steps": 8}), pairs)
    train(first, state_path=state)
    # the state belongs to a run with another step count: refused
    with pytest.raises(InputError, match="other settings"):
        train(Trainer(lm, config, pairs), state_path=state)
    halfway = Trainer(lm, config, pairs)
    stored = torch.load(state, map_location="cpu", weights_only=False)
    stored["config"] = config.digest()  # the same run, interrupted at step 8
    torch.save(stored, state)
    resumed = train(halfway, state_path=state)
    assert halfway.step == 12
    assert torch.allclose(resumed.bias, whole.bias, atol=1e-6)
    assert resumed.gain == pytest.approx(whole.gain, abs=1e-6)


def test_adapter_files_round_trip_and_refuse_other_models(tiny_lm, tmp_path):
    from tests.conftest import build_tiny_model

    lm = tiny_lm
    adapter = Adapter(1.25, torch.randn(lm.d_model), torch.randn(lm.d_model), 2, _fingerprint(lm),
                      unit=3.0, info='{"steps": 1}')
    path = save_adapter(adapter, tmp_path / "a.safetensors")
    loaded = load_adapter(path)
    assert loaded.digest == adapter.digest and loaded.gain == 1.25
    assert torch.equal(loaded.scale_bias, adapter.scale_bias)
    assert resolve_for_model(str(path), lm, 2).digest == adapter.digest
    with pytest.raises(InputError, match="injection layer 2"):
        resolve_for_model(str(path), lm, 3)
    other = build_tiny_model("llama", seed=7)
    with pytest.raises(InputError, match="another model"):
        resolve_for_model(str(path), other, 2)
    wide = build_tiny_model("llama", d_model=48)
    with pytest.raises(InputError, match="d_model 32"):
        resolve_for_model(str(path), wide, 2)
    # `auto` never applies the shipped adapter (trained on SmolLM2) to another model
    assert resolve_for_model("auto", lm, 2) is None
    assert resolve_for_model("none", lm, 2) is None


def test_bad_adapter_files_get_one_line(tmp_path):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(InputError, match="neither auto, default, none nor an existing file"):
        _config(adapter=str(missing))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="cannot read adapter"):
        load_adapter(junk)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"W_dec": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(InputError, match="not a selfexplain adapter"):
        load_adapter(foreign)
    nan = Adapter(1.0, torch.full((4,), float("nan")), None, 2, "x")
    with pytest.raises(InputError, match="NaN"):
        load_adapter(save_adapter(nan, tmp_path / "nan.safetensors"))


def test_the_settings_hash_follows_the_adapter_content_not_its_path(tiny_lm, tmp_path):
    lm = tiny_lm
    first = save_adapter(Adapter(1.0, torch.ones(lm.d_model), None, 2, "x"), tmp_path / "a.safetensors")
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(first.read_bytes())
    other = save_adapter(Adapter(1.0, torch.ones(lm.d_model) * 2, None, 2, "x"),
                         tmp_path / "b.safetensors")
    none = _config(adapter="none")
    assert _config(adapter=str(first)).settings_hash() == _config(adapter=str(copy)).settings_hash()
    assert _config(adapter=str(first)).settings_hash() != _config(adapter=str(other)).settings_hash()
    assert _config(adapter=str(first)).settings_hash() != none.settings_hash()
    # `none` keeps the hash every stored run has (the field is left out at its neutral value)
    import hashlib

    before = none.model_dump_json(exclude={"adapter", "precision"})
    assert none.settings_hash() == hashlib.sha256(before.encode()).hexdigest()[:16]
    # the default preset's `auto` is part of its settings: not the hash of `none`
    assert _config().adapter == "auto" and _config().settings_hash() != none.settings_hash()
    # the null (failure threshold) depends on what is injected, so it follows the adapter too
    assert _config(adapter=str(first)).null_hash() != none.null_hash()


def test_identity_is_identity_and_latent_pairs_refuse_test_ids():
    assert identity(8).is_identity
    assert not Adapter(1.0, torch.ones(8), None, 2, "").is_identity
    directions = torch.eye(3)
    pairs = latent_pairs(directions, [0, 2, 4], [" cat", "\n", "dog"])
    assert [p.token for p in pairs] == ["cat", "dog"]  # a token without a letter is no label
    with pytest.raises(InputError, match="odd ids"):
        latent_pairs(directions, [0, 1, 2], ["a", "b", "c"])


def test_train_adapter_writes_the_file_and_clears_its_resume_state(tmp_path):
    from selfexplain.adapter_training import train_adapter

    lm = _sharp_tiny_model()
    torch.manual_seed(2)
    directions = torch.nn.functional.normalize(torch.randn(4, lm.d_model), dim=-1)
    pairs = [TrainPair(directions[i], t, "word") for i, t in enumerate(["ab", "cd", "ef", "gh"])]
    config = AdapterTrainConfig(steps=4, batch_size=4, scales=(1.0,), save_every=2)
    out = tmp_path / "adapters" / "tiny.safetensors"
    seen = []
    adapter = train_adapter(lm, config, out, train_pairs=pairs, dev_pairs=pairs[:2],
                            progress=lambda step, loss: seen.append(step))
    assert seen == [1, 2, 3, 4]
    assert load_adapter(out).digest == adapter.digest
    # the meaning targets were the model's own answers (`self`), and nothing is left behind
    assert not (tmp_path / "adapters" / "tiny.safetensors.state.pt").exists()
    assert not (tmp_path / "adapters" / "tiny.safetensors.targets.json").exists()
    with pytest.raises(InputError, match=".safetensors"):
        train_adapter(lm, config, tmp_path / "a.pt", train_pairs=pairs)


def test_train_adapter_command_refuses_bad_input_in_one_line(tiny_model_dir, tmp_path, capsys):
    from cli.cli import main

    out = str(tmp_path / "a.safetensors")
    assert main(["train-adapter", "--out", str(tmp_path / "a.bin"), "--sae", "none"]) == 2
    assert "write the adapter to a .safetensors file" in capsys.readouterr().err
    assert main(["train-adapter", "--out", out, "--steps", "0", "--sae", "none"]) == 2
    assert "invalid steps" in capsys.readouterr().err
    # a character-level tokenizer has no whole words: said, with the count
    assert main(["train-adapter", "--out", out, "--model", tiny_model_dir, "--sae", "none",
                 "--precision", "float32"]) == 2
    assert "vocabulary words qualify" in capsys.readouterr().err
