"""The engine end to end on tiny models: shapes, reproducibility, presets, flags, bad input."""

import pytest
import torch

from selfexplain.config import ExplainConfig
from selfexplain.errors import InputError, SaeLoadError
from selfexplain.explain import SelfExplainer, explain_directions, explain_sae_features
from selfexplain.statstore import load_sae


def _config(**overrides):
    base = dict(max_new_tokens=6, batch_rows=16, metric_scales=(0.0, 0.5, 1.0, 2.0), top_scales=2,
                samples_per_scale=2, min_scale=0.4)
    base.update(overrides)
    return ExplainConfig.from_preset("default", **base)


def test_explain_returns_ranked_candidates_for_every_family(tiny_lm_any):
    directions = torch.randn(3, tiny_lm_any.d_model)
    explainer = SelfExplainer(tiny_lm_any, _config())
    results = explainer.explain(directions, [0, 1, 2])
    assert [r.feature for r in results] == [0, 1, 2]
    for r in results:
        meaning = [c for c in r.candidates if c.prompt == "meaning"]
        repeat = [c for c in r.candidates if c.prompt == "repeat"]
        # meaning: 2 best scales x 2 samples; repeat: the preset's 1 best of them x 2 samples
        assert len(meaning) == 4 and len(repeat) == 2
        assert sorted(c.rank for c in meaning) == list(range(4))
        assert len(r.explanations) <= 3
        assert all(c.chosen for c in r.explanations)
        # explanations come best first by score, and only from eligible scales
        scores = [c.score for c in r.explanations]
        assert scores == sorted(scores, reverse=True)
        assert all(c.scale >= explainer.min_scale for c in r.explanations)
        assert r.failed == (r.max_roundtrip < explainer.config.failure_threshold)
        assert len(r.sweeps) == 2 and len(r.sweeps[0].scales) == 4


def test_repeat_scales_count_and_zero_runs_no_repeat_prompt(tiny_lm):
    directions = torch.randn(2, tiny_lm.d_model)
    two = SelfExplainer(tiny_lm, _config(repeat_scales=2)).explain(directions, [0, 1])
    assert all(sum(c.prompt == "repeat" for c in r.candidates) == 4 for r in two)
    none = SelfExplainer(tiny_lm, _config(repeat_scales=0)).explain(directions, [0, 1])
    for with_repeat, without in zip(two, none):
        assert {c.prompt for c in without.candidates} == {"meaning"} and len(without.sweeps) == 1
        assert without.max_selfsim_repeat is None
        # the meaning prompt's samples do not depend on the repeat prompt
        assert ([c.text for c in without.candidates]
                == [c.text for c in with_repeat.candidates if c.prompt == "meaning"])
        # peak recovery reads the meaning answers: the token of the best-reading one
        best = max(without.candidates, key=lambda c: c.extra["roundtrip"])
        assert without.recovered_token == best.peak_token
    with pytest.raises(InputError, match="repeat_scales 0 runs no repeat prompt"):
        _config(repeat_scales=0, token_recovery="answer")


def test_sampling_is_reproducible_and_independent_of_batching(tiny_lm):
    directions = torch.randn(4, tiny_lm.d_model)
    together = explain_directions(tiny_lm, directions, _config(seed=3), features=[10, 11, 12, 13])
    alone = explain_directions(tiny_lm, directions[2:3], _config(seed=3, batch_rows=4), features=[12])
    texts = lambda r: [(c.prompt, c.scale, c.sample, c.text) for c in r.candidates]  # noqa: E731
    assert texts(together[2]) == texts(alone[0])
    other_seed = explain_directions(tiny_lm, directions[2:3], _config(seed=4), features=[12])
    assert texts(other_seed[0]) != texts(alone[0])


def test_faithful_preset_samples_every_generation_scale(tiny_lm):
    config = ExplainConfig.from_preset("faithful", max_new_tokens=3, batch_rows=64)
    assert len(config.metric_scales) == 64 and config.metric_scales[-1] == 200.0
    result = explain_directions(tiny_lm, torch.randn(1, tiny_lm.d_model), config)[0]
    meaning = [c for c in result.candidates if c.prompt == "meaning"]
    assert len(meaning) == 32
    # scales under 10 never win: every chosen explanation was sampled at scale >= 10
    assert all(c.scale >= 10.0 for c in result.explanations)


def test_failure_threshold_flags(tiny_lm):
    directions = torch.randn(2, tiny_lm.d_model)
    high = explain_directions(tiny_lm, directions, _config(failure_threshold=10.0))
    assert all(r.failed and "threshold" in r.failure_reason for r in high)
    low = explain_directions(tiny_lm, directions, _config(failure_threshold=-10.0))
    assert not any(r.failed for r in low)


def test_sae_features_skip_nan_and_zero_rows(tmp_path, tiny_lm):
    from tests.conftest import write_sae_folder

    decoder = torch.randn(8, tiny_lm.d_model)
    decoder[3] = float("nan")
    decoder[5] = 0.0
    sae = load_sae(str(write_sae_folder(tmp_path / "sae", tiny_lm.d_model, 8, decoder=decoder)))
    results, skipped = explain_sae_features(tiny_lm, sae, [2, 3, 4, 5], _config())
    assert [r.feature for r in results] == [2, 4]
    assert {s.feature: s.reason for s in skipped} == {
        3: "decoder row contains NaN or infinity", 5: "decoder row is zero"}


def test_sae_width_mismatch_is_refused(tmp_path, tiny_lm):
    from tests.conftest import write_sae_folder

    sae = load_sae(str(write_sae_folder(tmp_path / "wide", tiny_lm.d_model + 8, 4)))
    with pytest.raises(SaeLoadError, match="width 40 but the model's residual stream is 32"):
        explain_sae_features(tiny_lm, sae, [0], _config())


def test_layers_out_of_range_are_refused(tiny_lm):
    with pytest.raises(InputError, match="injection layer 9"):
        SelfExplainer(tiny_lm, _config(injection_layer=9, probe_layer=10))
    with pytest.raises(InputError, match="probe layer 7"):
        SelfExplainer(tiny_lm, _config(probe_layer=7))


def test_directions_of_wrong_width_are_refused(tiny_lm):
    with pytest.raises(InputError, match="expected"):
        explain_directions(tiny_lm, torch.randn(2, tiny_lm.d_model + 1), _config())


def test_bfloat16_engine_and_precision_check():
    from tests.conftest import build_tiny_model
    from selfexplain.attention import use_grouped_attention

    lm = build_tiny_model("llama", seed=5)
    lm.model.to(torch.bfloat16)
    use_grouped_attention(lm.model)
    with pytest.raises(InputError, match="loaded in bfloat16 but the configuration asks for float32"):
        SelfExplainer(lm, _config())
    config = _config(precision="bfloat16")
    assert config.settings_hash() != _config().settings_hash()
    results = SelfExplainer(lm, config).explain(torch.randn(2, lm.d_model), [0, 1])
    # meaning 2 scales x 2 samples + repeat 1 scale x 2 samples
    assert all(len(r.candidates) == 6 and r.max_roundtrip is not None for r in results)


def test_repeat_prompt_has_its_own_token_budget(tiny_lm):
    config = _config(max_new_tokens=12, repeat_max_new_tokens=2, samples_per_scale=4)
    result = explain_directions(tiny_lm, torch.randn(2, tiny_lm.d_model), config)
    tokens = lambda c: len(tiny_lm.tokenizer(c.text, add_special_tokens=False).input_ids)  # noqa: E731
    lengths = {kind: [tokens(c) for r in result for c in r.candidates if c.prompt == kind]
               for kind in ("meaning", "repeat")}
    assert max(lengths["repeat"]) <= 2 < max(lengths["meaning"])


def test_devices_are_checked_before_anything_loads():
    from selfexplain.models import resolve_device

    assert resolve_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(InputError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            resolve_device("cuda")


def test_gpu_batch_fits_memory(tiny_lm):
    from selfexplain.explain import fit_batch_rows

    # tiny llama: 6 layers, 2 kv heads of 8, float32; vocab from the tiny tokenizer
    per_row = 4 * (2 * 6 * 2 * 8 * 100 * 4 + tiny_lm.model.config.vocab_size * 8)
    assert fit_batch_rows(tiny_lm, 100, 10 * per_row) == 10
    assert fit_batch_rows(tiny_lm, 100, per_row // 2) == 1
    assert fit_batch_rows(tiny_lm, 200, 10 * per_row) < 10


def test_scale_zero_rows_skip_the_pass_unless_sampled(tiny_lm):
    directions = torch.randn(2, tiny_lm.d_model)
    skipped = explain_directions(tiny_lm, directions, _config())  # min_scale 0.4: never sampled
    for r in skipped:  # the prompt's own scale-0 pass stands in: relative metrics exactly 0
        assert r.sweeps[0].scales[0] == 0 and r.sweeps[0].selfsim[0] == 0.0
        assert r.sweeps[0].entropy[0] == 0.0
    # scale 0 eligible and among the sampled scales: its row runs and its cache is sampled from
    sampled = explain_directions(tiny_lm, directions, _config(min_scale=0.0, top_scales=4))
    assert any(c.scale == 0.0 for r in sampled for c in r.candidates)


def test_allocator_tuning_applies_on_glibc_only():
    import platform

    from selfexplain.allocator import keep_buffers_in_heap

    assert keep_buffers_in_heap() is (platform.libc_ver()[0] == "glibc")
