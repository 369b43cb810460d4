"""Round trip (issue 9): residuals read back at the injection layer, and the strategy using them."""

import pytest
import torch

from selfexplain.config import ExplainConfig
from selfexplain.explain import NORM_TEXTS, explain_directions
from selfexplain.roundtrip import RoundTrip, token_residuals
from selfexplain.selection import STRATEGIES, SweepScores, order


def test_padded_batches_give_each_texts_own_residuals(tiny_lm_any):
    lm = tiny_lm_any
    texts = ["ab", "a longer text", "", "cd ef"]
    batched = token_residuals(lm, texts, layer=2, context="x: ", batch=8)
    assert batched[2].shape == (0, lm.d_model)
    prefix = len(lm.tokenizer("x: ", add_special_tokens=False).input_ids)
    for text, got in zip(texts, batched):
        if not text:
            continue
        ids = lm.tokenizer("x: " + text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.inference_mode():  # a full forward, one text, no hooks: hidden_states[2]
            full = lm.model(input_ids=ids, use_cache=False, output_hidden_states=True)
        assert got.shape == (ids.shape[1] - prefix, lm.d_model)
        torch.testing.assert_close(got, full.hidden_states[2][0, prefix:].float(), atol=1e-5,
                                   rtol=1e-4)


def test_a_text_scores_one_against_its_own_token_and_less_elsewhere(tiny_lm):
    trip = RoundTrip(tiny_lm, 2, list(NORM_TEXTS), context="x: ")
    own = token_residuals(tiny_lm, ["cat"], 2, context="x: ")[0][-1] - trip.mean
    direction = own / own.norm()
    scores = trip.scores(["cat", "qqqq zzz", ""], direction.expand(3, -1))
    assert scores[0] == pytest.approx(1.0, abs=1e-4)
    assert scores[1] < 0.99 and scores[2] == 0.0


def _sweep():
    return SweepScores(torch.tensor([0.0, 1.0, 2.0]), torch.zeros(3), torch.zeros(3),
                       torch.tensor([0.0, 0.2, 0.1]), 0.5)


def test_roundtrip_outranks_consensus_and_needs_its_scores():
    texts = ["pet dog", "dog", "cat", "kitten"]
    indices = [1, 2, 1, 2]  # 'dog' agrees across scales; the cats do not share a word
    without = STRATEGIES["consensus"](indices, texts, _sweep())
    assert order(without.score)[:2] == [0, 1]
    ranked = STRATEGIES["roundtrip"](indices, texts, _sweep(), roundtrip=[0.1, 0.1, 0.9, 0.2])
    assert order(ranked.score)[0] == 2
    # equal round trips: consensus decides, as before
    tied = STRATEGIES["roundtrip"](indices, texts, _sweep(), roundtrip=[0.5] * 4)
    assert order(tied.score) == order(without.score)
    with pytest.raises(ValueError, match="round-trip score per candidate"):
        STRATEGIES["roundtrip"](indices, texts, _sweep())


def test_engine_stores_the_roundtrip_of_every_candidate_and_ranks_by_it(tiny_lm):
    config = ExplainConfig.from_preset("default", max_new_tokens=4, selection="roundtrip",
                                       samples_per_scale=2, batch_rows=64)
    result = explain_directions(tiny_lm, torch.randn(2, tiny_lm.d_model), config)[0]
    for prompt in ("meaning", "repeat"):
        ranked = sorted((c for c in result.candidates if c.prompt == prompt), key=lambda c: c.rank)
        assert all(-1.0 <= c.extra["roundtrip"] <= 1.0 for c in ranked)
        for c in ranked:  # the score is the documented formula of the stored parts
            assert c.score == pytest.approx(
                c.composite + 5.0 * c.extra["agreement"] + 10.0 * c.extra["roundtrip"], abs=1e-5)
        nonempty = [c.score for c in ranked if c.text]
        assert nonempty == sorted(nonempty, reverse=True)


def test_failure_flag_reads_the_best_round_trip(tiny_lm):
    directions = torch.randn(2, tiny_lm.d_model)

    def run(**overrides):
        config = ExplainConfig.from_preset("default", max_new_tokens=4, batch_rows=64, **overrides)
        return explain_directions(tiny_lm, directions, config)

    for r in run(failure_threshold=1.5):  # a cosine never reaches 1.5
        best = max(c.extra["roundtrip"] for c in r.candidates if c.prompt == "meaning" and c.text)
        assert r.max_roundtrip == pytest.approx(best)
        assert r.failed and "round trip" in r.failure_reason and not r.recovered_reliable
    for r in run(failure_threshold=-1.5):
        assert not r.failed and r.failure_reason is None
        assert r.recovered_reliable == (r.recovered_token is not None)
    # the post's flag is still there, and the faithful preset uses it
    assert ExplainConfig.from_preset("faithful").failure_metric == "selfsim"
    for r in run(failure_metric="selfsim", failure_threshold=10.0):
        assert r.failed and "self-similarity" in r.failure_reason


def test_the_peak_is_the_token_that_reads_back_as_the_direction(tiny_lm):
    trip = RoundTrip(tiny_lm, 2, list(NORM_TEXTS), context="x: ")
    text = "to order"
    residuals = token_residuals(tiny_lm, [text], 2, context="x: ")[0]
    ids = tiny_lm.tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) >= 2
    for position in range(len(ids)):  # aim at each token in turn: the peak follows it
        own = residuals[position] - trip.mean
        peak = trip.peaks([text, ""], (own / own.norm()).expand(2, -1))
        assert peak[0].token == tiny_lm.tokenizer.decode([ids[position]])
        assert peak[0].score == pytest.approx(1.0, abs=1e-4)
        assert peak[1] == (0.0, None)


def test_peak_recovery_returns_the_peak_of_the_best_reading_answer(tiny_lm):
    from selfexplain.explain import best_reading_answer

    directions = torch.randn(3, tiny_lm.d_model)
    config = ExplainConfig.from_preset("default", max_new_tokens=4, samples_per_scale=2,
                                       batch_rows=64)
    assert config.token_recovery == "peak"
    for r in explain_directions(tiny_lm, directions, config):
        answered = [c for c in r.candidates if c.text]
        assert all(c.peak_token is not None for c in answered)
        best = max(answered, key=lambda c: c.extra["roundtrip"])  # either prompt
        assert best_reading_answer(r.candidates) == best and r.recovered_token == best.peak_token
        assert best.peak_token in tiny_lm.tokenizer.decode(
            tiny_lm.tokenizer(best.text, add_special_tokens=False).input_ids)
        assert r.recovered_reliable == (best.extra["roundtrip"] >= config.failure_threshold)
    # the post's rule reads the repeat prompt's answer itself
    answer = explain_directions(tiny_lm, directions,
                                config.model_copy(update={"token_recovery": "answer"}))
    for r in answer:
        repeat = [c.text for c in r.candidates if c.prompt == "repeat" and c.text]
        assert r.recovered_token is None or r.recovered_token in repeat
    assert best_reading_answer([]) is None
