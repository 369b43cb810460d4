"""Metrics: pure formulas on hand-made numbers, and the engine's sweep against a slow reference."""

import math

import torch

from selfexplain.config import ExplainConfig
from selfexplain.explain import SelfExplainer
from selfexplain.metrics import composite, cross_entropy, entropy, minmax, nearest_scale_index


def test_entropy_and_cross_entropy_by_hand():
    uniform = torch.zeros(4)
    assert math.isclose(float(entropy(uniform)), math.log(4), rel_tol=1e-6)
    peaked = torch.tensor([100.0, 0.0, 0.0, 0.0])
    assert float(entropy(peaked)) < 1e-6
    # p = onehot(0); q uniform -> crossent = log 4
    assert math.isclose(float(cross_entropy(peaked, uniform)), math.log(4), rel_tol=1e-5)


def test_composite_minmax_and_min_scale_floor():
    scales = torch.tensor([0.0, 5.0, 10.0, 20.0])
    selfsim = torch.tensor([[0.0, 0.5, 0.2, 0.1]])
    ent = torch.tensor([[0.0, -1.0, -0.5, 0.0]])
    got = composite(selfsim, ent, scales, alpha=0.4, min_scale=10.0)
    raw = 0.4 * minmax(selfsim) - 0.6 * minmax(ent)
    # scales 0 and 5 are under the minimum: they take the minimum over the eligible scales
    floor = float(raw[0, 2:].min())
    expected = torch.tensor([[floor, floor, float(raw[0, 2]), float(raw[0, 3])]])
    torch.testing.assert_close(got, expected)
    assert int(got.argmax()) == 2


def test_nearest_scale_index():
    grid = torch.tensor([0.0, 10.0, 20.0])
    assert nearest_scale_index(grid, torch.tensor([1.0, 14.0, 16.0, 99.0])).tolist() == [0, 1, 2, 2]


def _reference(lm, prompt, direction, scale, inject, probe):
    """Slow reference: full forward, no prefix cache, injection by a forward hook on the previous
    block's output, hidden states from output_hidden_states."""
    ids = prompt.input_ids[None]

    def hook(_m, _args, output):
        hidden = (output[0] if isinstance(output, tuple) else output).clone()
        hidden[:, prompt.placeholder_positions] = scale * direction
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = lm.layers[inject - 1].register_forward_hook(hook)
    try:
        with torch.inference_mode():
            out = lm.model(input_ids=ids, use_cache=False, output_hidden_states=True)
    finally:
        handle.remove()
    return out.hidden_states[probe][0, -1], out.logits[0, -1]


def test_sweep_matches_slow_reference(tiny_lm_any):
    lm = tiny_lm_any
    config = ExplainConfig.from_preset(
        "faithful", metric_scales=(0.0, 0.5, 2.0, 8.0), generation_scales=(2.0,),
        max_new_tokens=3, min_scale=0.0, recover_token=False,
    )
    explainer = SelfExplainer(lm, config)
    torch.manual_seed(1)
    direction = torch.randn(lm.d_model)
    direction /= direction.norm()
    result = explainer.explain(direction[None], [0])[0]
    sweep = result.sweeps[0]
    prompt = explainer.states["meaning"].prompt
    probe0, logits0 = _reference(lm, prompt, direction, 0.0, 2, explainer.probe_layer)
    cos = torch.nn.functional.cosine_similarity
    for i, scale in enumerate(config.metric_scales):
        probe_s, logits_s = _reference(lm, prompt, direction, scale, 2, explainer.probe_layer)
        want_selfsim = float(cos(probe_s, direction, dim=0) - cos(probe0, direction, dim=0))
        want_entropy = float(entropy(logits_s) - entropy(logits0))
        assert math.isclose(sweep.selfsim[i], want_selfsim, abs_tol=1e-4)
        assert math.isclose(sweep.entropy[i], want_entropy, abs_tol=1e-4)
    assert sweep.selfsim[0] == 0.0 or abs(sweep.selfsim[0]) < 1e-5
