"""Real-feature metrics on a hand-made feature-stats frame with a bag-of-words embedder."""

from __future__ import annotations

import math

import polars as pl
import pytest
import torch

from selfexplain.errors import InputError
from selfexplain.evaluation import real
from selfexplain.evaluation.suite import EvalRequest, EvalOutput, eval_result_rows, sample_features


VOCAB = ["dog", "cat", "red", "blue", "run", "the", "pet", "colour"]


def bag_of_words(texts) -> torch.Tensor:
    """A deterministic toy embedder: counts of VOCAB words, L2-normalised (zeros -> e_0)."""
    rows = []
    for text in texts:
        words = text.lower().replace("«", " ").replace("»", " ").replace(",", " ").split()
        v = torch.tensor([float(words.count(w)) for w in VOCAB])
        rows.append(v / v.norm() if v.norm() > 0 else torch.eye(len(VOCAB))[0])
    return torch.stack(rows)


def _stats() -> pl.DataFrame:
    ctx = lambda *texts: [{"text": t, "activation": 1.0} for t in texts]  # noqa: E731
    return pl.DataFrame({
        "feature": [0, 1, 2, 3],
        "density": [0.1, 0.1, 0.1, 0.0],
        "single_token": [True, False, True, False],
        "top_tokens": [[" dog", " pet"], [" red"], [" run"], []],
        "top_contexts": [ctx("the «dog» ran", "a «dog» pet"), ctx("the «red» colour", "blue"),
                         ctx("they «run»"), []],
    })


def test_derangement_has_no_fixed_point() -> None:
    for seed in range(20):
        items = list(range(7))
        moved = real.derangement(items, seed)
        assert sorted(moved) == items and all(a != b for a, b in zip(items, moved))
    assert real.derangement([5, 9], 0) == [9, 5]
    with pytest.raises(InputError):
        real.derangement([1], 0)


def test_score_real_rows_and_summary() -> None:
    stats = _stats()
    rows = real.score_real("m", [0, 1, 2], ["a dog, a pet", "red colour", "cat"],
                           ["dog", "blue", None], stats, bag_of_words,
                           top_labels=[["a dog, a pet", "x"], ["red colour"], ["cat"]])
    by = {r["feature"]: r for r in rows.iter_rows(named=True)}
    assert by[0]["recovered_exact"] is True and by[0]["label_names_token"] is True
    assert by[1]["recovered_exact"] is None  # not a single-token feature
    assert by[2]["recovered_exact"] is False  # no token offered counts as not recovered
    assert by[0]["sim_own"] > by[0]["sim_other"]
    punct = real.score_real("m", [0], ["comma"], [","], stats.with_columns(
        pl.lit([","]).alias("top_tokens")), bag_of_words)
    assert punct["label_names_token"][0] is None  # a label cannot "name" punctuation
    assert punct["recovered_exact"][0] is True
    assert by[0]["labels"] == ["a dog, a pet", "x"]
    assert {by[f]["other_feature"] for f in by} <= {0, 1, 2} and all(
        by[f]["other_feature"] != f for f in by)
    summary = real.summarise_real(rows)
    got = {(r["suite"], r["metric"]): r for r in summary.iter_rows(named=True)}
    recovery = got[("token_recovery", "recovered_exact")]
    assert recovery["n"] == 2 and recovery["value"] == 0.5
    auc = got[("embedding", "auroc")]
    own, other = rows["sim_own"].to_list(), rows["sim_other"].to_list()
    pairs = [1.0 if o > t else 0.5 if o == t else 0.0 for o in own for t in other]
    assert auc["n"] == 3 and auc["value"] == pytest.approx(sum(pairs) / len(pairs))
    assert own[0] > other[0]  # the dog label is closer to the dog contexts than to another's
    # a method without a literal answer (max-activating tokens) gets no recovery rows
    none = real.score_real("maxact", [0, 1], ["dog", "red"], None, stats, bag_of_words)
    assert none["recovered_exact"].null_count() == 2
    with pytest.raises(InputError, match="lack features"):
        real.score_real("m", [9], ["x"], None, stats, bag_of_words)


def test_perfect_labels_give_auroc_one() -> None:
    stats = _stats()
    rows = real.score_real("oracle", [0, 1, 2], ["dog pet", "red colour blue", "run"], None, stats,
                           bag_of_words)
    summary = real.summarise_real(rows)
    auc = summary.filter(pl.col("metric") == "auroc")["value"][0]
    assert math.isclose(auc, 1.0)


def test_sample_features_is_seeded_and_live() -> None:
    stats = _stats()
    assert sample_features(stats, 10, 0) == [0, 1, 2]  # feature 3 is dead
    assert sample_features(stats, 2, 1) == sample_features(stats, 2, 1)
    two = sample_features(stats, 2, 1)
    assert 1 in two and len(set(two) & {0, 2}) == 1  # half single-token, half not
    assert sample_features(stats, 10, 0, "dev") == [0, 2]  # even ids only
    assert sample_features(stats, 10, 0, "test") == [1]  # odd ids only (3 is dead)


def test_eval_result_rows_fit_the_warehouse() -> None:
    from selfexplain.warehouse import Warehouse

    rows = real.score_real("default", [0, 1, 2], ["dog", "red", "run"], ["dog", "red", "run"],
                           _stats(), bag_of_words)
    output = EvalOutput(EvalRequest(suite="real"), items={"real": rows},
                        settings={"default": "abc"})
    frame = eval_result_rows(output, eval_id="e1", model_id="m", sae_release="r", sae_id="s")
    assert set(frame["metric"]) >= {"recovered_exact", "sim_own", "sim_other"}
    assert (frame["settings_hash"] == "abc").all() and (frame["release"] == "r").all()
    with Warehouse(":memory:") as warehouse:
        assert warehouse.upsert("eval_result", frame) == frame.height
        assert warehouse.upsert("eval_result", frame) == frame.height
        assert warehouse.table("eval_result").height == frame.height


def test_request_validation() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        EvalRequest(methods=("default", "gpt"))
    with pytest.raises(ValueError, match="strategy"):
        EvalRequest(rerank=("nope",))
    assert EvalRequest(methods=("default", "default")).methods == ("default",)


def test_real_suite_on_tiny_model(tiny_lm, tmp_path) -> None:
    from tests.conftest import write_sae_folder

    from selfexplain.evaluation.suite import run_evaluation
    from selfexplain.statstore import load_sae

    sae = load_sae(str(write_sae_folder(tmp_path / "sae", tiny_lm.d_model, 6)))
    words = ["dog pet", "cat pet", "red colour", "blue colour", "run", "the dog runs"]
    stats = pl.DataFrame({
        "feature": list(range(6)), "density": [0.1] * 6,
        "single_token": [True, True, False, False, True, False],
        "top_tokens": [[" a"], [" b"], [" c"], [" d"], [" e"], [" f"]],
        "top_contexts": [[{"text": f"x «{w}» y", "activation": 1.0}] for w in words],
    })
    request = EvalRequest(suite="real", limit=4, null_directions=0, rerank=("roundtrip",),
                          methods=("default", "vocabproj", "tokenchange", "maxact"),
                          overrides={"max_new_tokens": 3, "top_scales": 2,
                                     "samples_per_scale": 1})
    output = run_evaluation(tiny_lm, request, sae=sae, stats=stats, embedder=bag_of_words)
    items = output.items["real"]
    assert set(items["method"]) == {"default", "default:roundtrip", "vocabproj", "tokenchange",
                                    "maxact"}
    # re-ranking with the engine's own strategy reproduces its labels and recovered tokens
    own = items.filter(pl.col("method") == "default").drop("method")
    assert own.equals(items.filter(pl.col("method") == "default:roundtrip").drop("method"))
    assert (items.group_by("method").len()["len"] == 3).all()  # DEV: the even ids 0, 2, 4
    assert set(items["feature"]) == {0, 2, 4}
    assert items.filter(pl.col("method") == "maxact")["recovered_exact"].null_count() == 3
    summary = output.summary
    assert {"token_recovery", "embedding", "failure_flag_real"} <= set(summary["suite"])
    assert set(summary.filter(pl.col("metric") == "auroc")["method"]) == {
        "default", "default:roundtrip", "vocabproj", "tokenchange", "maxact"}
