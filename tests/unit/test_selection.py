"""Selection strategies on hand-made candidates: pure functions, exact expectations."""

import torch

from selfexplain.explain import recover_token
from selfexplain.results import Candidate
from selfexplain.selection import STRATEGIES, SweepScores, content_words, order, rank_consensus


def _sweep():
    scales = torch.tensor([0.0, 10.0, 20.0, 30.0])
    return SweepScores(scales, torch.tensor([0.0, 0.1, 0.3, 0.2]), torch.tensor([0.0, -1.0, 0.0, -2.0]),
                       torch.tensor([-0.6, 0.1, 0.2, 0.4]), 5.0)


def test_content_words_drop_filler():
    assert content_words('a word used to describe a Dog, or dogs') == {"dog", "dogs"}


def test_composite_ranks_by_the_composite_at_each_scale():
    ranked = STRATEGIES["composite"]([1, 2, 3], ["x", "y", "z"], _sweep())
    assert order(ranked.score) == [2, 1, 0]


def test_entropy_and_selfsim_alone():
    assert order(STRATEGIES["selfsim"]([1, 2, 3], ["a", "b", "c"], _sweep()).score) == [1, 2, 0]
    # lowest entropy wins; scale 0 is under min_scale and takes the floor
    assert order(STRATEGIES["entropy"]([0, 1, 3], ["a", "b", "c"], _sweep()).score) == [2, 1, 0]


def test_consensus_prefers_what_recurs_across_scales():
    texts = ["pet dog", "gibberish", "dog", "spaceship"]
    indices = [1, 3, 2, 3]  # 'dog' appears at scales 1 and 2; the others at one scale only
    ranked = rank_consensus(indices, texts, _sweep(), weight=5.0)
    assert [e["agreement"] for e in ranked.extra] == [0.5, 0.0, 0.5, 0.0]
    assert order(ranked.score)[:2] == [2, 0]  # both agree; the composite breaks the tie
    # two samples at ONE scale do not vote for each other
    same_scale = rank_consensus([3, 3], ["dog", "dog"], _sweep(), weight=5.0)
    assert [e["agreement"] for e in same_scale.extra] == [0.0, 0.0]
    # weight 0 is the composite
    assert rank_consensus(indices, texts, _sweep(), weight=0.0).score == \
        STRATEGIES["composite"](indices, texts, _sweep()).score


def _cand(text, rank):
    return Candidate("repeat", text, 1.0, 0, 0.0, 0.0, rank, False)


def test_recover_token_majority_and_top():
    repeat = [_cand("in", 0), _cand("inside", 1), _cand("inside", 2), _cand("", 3)]
    assert recover_token(repeat, majority=False) == "in"
    assert recover_token(repeat, majority=True) == "inside"
    assert recover_token([_cand("", 0)], majority=True) is None


def test_top_n_skips_repeated_answers():
    from selfexplain.explain import _distinct_top

    texts = ["Dog", "dog.", "", "pet", "cat", "bird"]
    assert _distinct_top([0, 1, 2, 3, 4, 5], texts, 3) == {0, 3, 4}
    assert _distinct_top([2], texts, 3) == set()
