"""Planted-concept scoring: the matcher, Wilson/AUROC, word lists, re-ranking the same samples."""

from __future__ import annotations

import math

import pytest

from selfexplain.evaluation.matching import names, names_any, same_token, target_forms, tokens
from selfexplain.evaluation.planted import (
    load_results,
    rerank,
    save_results,
    score_labels,
    score_planted,
    score_strategies,
    summarise_planted,
    PlantedRun,
)
from selfexplain.evaluation.stats import auroc, auroc_interval, wilson
from selfexplain.evaluation.wordlists import load_classes, load_words, words
from selfexplain.config import ExplainConfig
from selfexplain.results import Candidate, FeatureExplanation, Sweep


@pytest.mark.parametrize(("text", "word", "pos", "expected"), [
    ("A dog is a loyal pet", "dog", "noun", True),
    ("Dogs bark at night", "dog", "noun", True),
    ("the dog's tail", "dog", "noun", True),
    ("He stopped the car", "stop", "verb", True),
    ("they were stopping", "stop", "verb", True),
    ("she ran home", "run", "verb", True),
    ("the mice ate", "mouse", "noun", True),
    ("a bigger house", "big", "adj", True),
    ("he studied law", "study", "verb", True),
    ("making bread", "make", "verb", True),
    ("hopping around", "hop", "verb", True),
    # near misses that a careless stemmer would accept
    ("the seed grew", "see", "verb", False),
    ("my mother", "moth", "noun", False),
    ("he cares", "car", "noun", False),
    ("the latest news", "new", "adj", False),
    ("hoping for rain", "hop", "verb", False),
    ("a red bed", "be", "verb", False),
    ("happiness", "happy", "adj", False),
    ("doghouse", "dog", "noun", False),
])
def test_matcher(text: str, word: str, pos: str, expected: bool) -> None:
    assert names(text, word, pos) is expected


def test_matcher_phrases_and_helpers() -> None:
    assert names("a list of body parts", "body part")
    assert not names("a part of the body", "body part")
    assert names_any("It is a kind of fruit", ["apple", "fruit"]) == "fruit"
    assert names_any("nothing here", ["apple"]) is None
    assert tokens("Don't STOP, dog's!") == ["don't", "stop", "dog"]
    assert same_token(' "Dog". ', "dog") and not same_token("dogs", "dog")
    assert "tiring" in target_forms("tired", "adj")  # an inflected target accepts its base's forms
    assert not names("", "dog")
    assert names("the year 1998", "1998") and names("2, 4, two", "2")


def test_wilson_interval() -> None:
    low, high = wilson(5, 10)
    assert low < 0.5 < high
    assert math.isclose(low, 0.2366, abs_tol=1e-3) and math.isclose(high, 0.7634, abs_tol=1e-3)
    assert wilson(0, 10)[0] == 0.0 and math.isclose(wilson(10, 10)[1], 1.0)
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson(11, 10)


def test_auroc() -> None:
    assert auroc([3, 4], [1, 2]) == 1.0
    assert auroc([1, 2], [3, 4]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    assert math.isclose(auroc([0.9, 0.4], [0.5, 0.1]), 0.75)
    assert math.isnan(auroc([], [1.0]))
    low, high = auroc_interval(0.75, 20, 20)
    assert low < 0.75 < high <= 1.0


def test_word_lists_are_disjoint_and_mixed() -> None:
    dev, test = load_words("dev"), load_words("test")
    assert len(dev) >= 200 and len(test) >= 200
    assert not {c.name for c in dev} & {c.name for c in test}
    assert len({c.pos for c in dev[:50]}) >= 3  # a --limit 50 prefix mixes parts of speech
    assert load_words("dev", limit=7) == dev[:7]
    classes = load_classes("dev")
    assert classes and all(set(c.members) <= set(c.answers) for c in classes)
    assert not {c.name for c in classes} & {c.name for c in load_classes("test")}
    assert len({c.feature_id for c in dev + test}) == len(dev) + len(test)


def _candidate(prompt: str, text: str, scale: float, rank: int, chosen: bool) -> Candidate:
    return Candidate(prompt=prompt, text=text, scale=scale, sample=0, composite=0.0, score=0.0,
                     rank=rank, chosen=chosen, extra={})


def _feature() -> FeatureExplanation:
    """Engine output for ` dog` where the composite favours large scales (gibberish there)."""
    scales = [0.0, 10.0, 20.0, 30.0]
    sweep = Sweep("meaning", scales, selfsim=[0.0, 0.3, 0.2, 0.1], entropy=[0.0, -1.0, -0.5, -2.0],
                  crossent=[1.0, 1.0, 1.0, 1.0], composite=[-0.6, 0.2, -0.1, 0.4])
    repeat = Sweep("repeat", scales, selfsim=[0.0, 0.1, 0.2, 0.0], entropy=[0.0, 0.0, 0.0, 0.0],
                   crossent=[1.0] * 4, composite=[0.0, 0.1, 0.5, 0.0])
    meaning = [
        _candidate("meaning", "zzz qqq", 30.0, 0, True),
        _candidate("meaning", "a small animal, a dog", 10.0, 2, True),
        _candidate("meaning", "a word used to express", 20.0, 1, True),
        _candidate("meaning", "", 20.0, 3, False),
    ]
    reps = [_candidate("repeat", "dog", 20.0, 0, True), _candidate("repeat", "cat", 10.0, 1, True)]
    return FeatureExplanation(
        feature=1, name="dog", explanations=[meaning[0], meaning[2], meaning[1]],
        recovered_token="dog", recovered_reliable=True, failed=False, failure_reason=None,
        max_selfsim=0.3, max_selfsim_repeat=0.2, candidates=meaning + reps,
        sweeps=[sweep, repeat],
    )


def test_score_planted_rows() -> None:
    fe = _feature()
    concept = words("dog", pos="noun")
    rows = score_planted([fe], concept)
    row = rows.row(0, named=True)
    assert row["hit_top1"] is False and row["hit_top3"] is True and row["hit_any"] is True
    assert row["recovered_exact"] is True and row["matched"] == "dog"
    assert row["n_any"] == 3  # the empty sample is not a label
    top1 = score_planted([fe], concept, top_n=1).row(0, named=True)
    assert top1["hit_top3"] is False  # hit_top3 means "within top_n"


def test_rerank_reuses_the_same_samples() -> None:
    fe = _feature()
    by_composite = rerank(fe, "composite", min_scale=5.0)
    assert [c.scale for c in by_composite] == [30.0, 10.0, 20.0, 20.0]
    assert by_composite[-1].text == ""  # empty answers always last
    by_selfsim = rerank(fe, "selfsim", min_scale=5.0)
    assert by_selfsim[0].text == "a small animal, a dog"
    assert {id(c) for c in by_selfsim} == {id(c) for c in by_composite}  # same objects, reordered
    # alpha 1 makes the composite self-similarity alone
    assert rerank(fe, "composite", min_scale=5.0, alpha=1.0)[0].scale == 10.0
    # a callable strategy works too
    from selfexplain.selection import Ranked

    shortest = lambda idx, texts, sweep, roundtrip=None: Ranked([-len(t) for t in texts], [{} for _ in texts])
    assert rerank(fe, shortest, min_scale=5.0)[0].text == "zzz qqq"
    frame = score_strategies([fe], words("dog", pos="noun"), ["composite", "selfsim"],
                             min_scale=5.0, prefix="faithful:")
    hits = dict(zip(frame["method"], frame["hit_top1"]))
    assert hits == {"faithful:composite": False, "faithful:selfsim": True}
    assert set(frame["recovered"]) == {"dog"}  # the repeat prompt is re-ranked too


def test_score_labels_for_baselines_and_classes() -> None:
    concepts = words("dog", "run", pos=None) + load_classes("dev")[:1]  # animals
    labels = [[" dogs", " cat"], ["walk", "jog"], ["a pet", "an animal"]]
    rows = score_labels(labels, concepts, method="vocabproj", recovered=[" dogs", "walk", "pet"])
    assert rows["hit_top3"].to_list() == [True, False, True]
    assert rows["recovered_exact"].to_list() == [False, False, True]  # "pet" is an accepted answer
    assert rows["recovered_match"].to_list() == [True, False, True]
    assert rows["failed"].null_count() == 3
    summary = summarise_planted(rows, split="dev")
    top3 = summary.filter((summary["suite"] == "planted") & (summary["metric"] == "hit_top3"))
    assert top3["n"].to_list() == [2] and top3["value"].to_list() == [0.5]
    assert {"planted", "planted_class"} == set(summary["suite"])
    assert "failed" not in set(summary["metric"])  # all-null metrics are not summarised


def test_save_and_load_round_trip(tmp_path) -> None:
    run = PlantedRun(words("dog", pos="noun"), [_feature()], ExplainConfig.from_preset("faithful"),
                     min_scale=5.0, unit=1.0, seconds=1.5)
    again = load_results(save_results(tmp_path / "run.json", run))
    assert again.results == run.results and again.concepts == run.concepts
    assert again.config == run.config
    assert again.frame().equals(run.frame())


def test_batched_directions_equal_one_word_at_a_time(tiny_lm) -> None:
    import torch

    from selfexplain.evaluation.wordlists import concept_directions
    from selfexplain.vectors import WORD_CONTEXT, word_residuals

    words_ = [" dog", " cat", " a", " hello"]
    alone = []
    for word in words_:  # a full forward per word, no hooks: the residual entering block 2
        ids = tiny_lm.tokenizer(WORD_CONTEXT.format(word=word), add_special_tokens=False,
                                return_tensors="pt").input_ids
        with torch.inference_mode():
            hidden = tiny_lm.model(input_ids=ids, output_hidden_states=True).hidden_states[2]
        alone.append(hidden[0, -1].float())
    assert torch.allclose(word_residuals(tiny_lm, words_, 2), torch.stack(alone), atol=1e-5)
    classes = load_classes("dev")[:2]
    directions = concept_directions(tiny_lm, words("dog", "cat") + classes, 2)
    assert directions.shape == (4, tiny_lm.d_model)
    assert torch.allclose(directions.norm(dim=-1), torch.ones(4), atol=1e-5)
