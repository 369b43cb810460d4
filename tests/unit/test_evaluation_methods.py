"""Baselines, scale quality, the threshold null and the report, on the tiny random model."""

from __future__ import annotations

import math

import polars as pl
import pytest
import torch

from selfexplain.config import ExplainConfig
from selfexplain.evaluation import baselines, report, scale_quality, thresholds
from selfexplain.evaluation.planted import run_planted, summarise_planted
from selfexplain.evaluation.stats import summary_frame, summary_row
from selfexplain.evaluation.wordlists import words
from selfexplain.explain import SelfExplainer


@pytest.fixture(scope="module")
def tiny_config() -> ExplainConfig:
    return ExplainConfig.from_preset(
        "default", scale_unit="absolute", metric_scales=(0.0, 1.0, 2.0, 4.0, 8.0), min_scale=1.0,
        top_scales=2, samples_per_scale=1, max_new_tokens=4, probe_layer=4,
    )


@pytest.fixture(scope="module")
def explainer(tiny_lm, tiny_config) -> SelfExplainer:
    return SelfExplainer(tiny_lm, tiny_config)


def test_vocabproj_is_the_logit_lens(tiny_lm) -> None:
    # the direction of a token's own unembedding row ranks that token first (tied or not)
    unembed = tiny_lm.model.get_output_embeddings().weight.detach()
    token = tiny_lm.tokenizer.convert_tokens_to_ids("q")
    gain = tiny_lm.model.model.norm.weight.detach()
    direction = (unembed[token] / gain)[None, :]
    scores = baselines.vocabproj_scores(tiny_lm, direction / direction.norm())
    assert int(scores.argmax()) == token
    labels = baselines.vocabproj(tiny_lm, torch.randn(3, tiny_lm.d_model), k=5)
    assert len(labels) == 3 and all(1 <= len(ls) <= 5 for ls in labels)
    assert all(any(ch.isalnum() for ch in t) for ls in labels for t in ls)
    assert all(len({t.lower() for t in ls}) == len(ls) for ls in labels)


def test_tokenchange_rises_with_the_direction(tiny_lm) -> None:
    directions = torch.nn.functional.normalize(torch.randn(2, tiny_lm.d_model), dim=-1)
    scores = baselines.tokenchange_scores(tiny_lm, directions, 2, 20.0, contexts=["ab", "hello"])
    assert scores.shape == (2, len(tiny_lm.tokenizer))
    # probability changes sum to zero over the vocabulary (both are distributions)
    assert torch.allclose(scores.sum(-1), torch.zeros(2), atol=1e-4)
    zero = baselines.tokenchange_scores(tiny_lm, directions, 2, 0.0, contexts=["ab"])
    assert zero.abs().max() < 1e-5  # no amplification, no change
    labels = baselines.tokenchange(tiny_lm, directions, 2, 20.0, k=4, contexts=["ab"])
    assert len(labels) == 2 and all(len(ls) <= 4 for ls in labels)


def test_added_at_removes_its_hook(tiny_lm) -> None:
    layer = tiny_lm.layers[1]
    before = len(layer._forward_pre_hooks)
    with pytest.raises(RuntimeError):
        with baselines.added_at(layer, torch.zeros(1, tiny_lm.d_model)):
            raise RuntimeError("boom")
    assert len(layer._forward_pre_hooks) == before


def test_maxact_tokens_from_stats() -> None:
    stats = pl.DataFrame({"feature": [0, 1], "top_tokens": [[" the", "The", ",", " a"], []]})
    assert baselines.maxact_tokens(stats, [0, 1, 7], k=3) == [["the", "a"], [], []]


def test_run_planted_and_scale_quality_on_tiny_model(tiny_lm, explainer, tiny_config) -> None:
    concepts = words("dog", "cat", "sun", "tree", pos="noun")
    run = run_planted(tiny_lm, tiny_config, concepts, explainer=explainer)
    rows = run.frame()
    assert rows["name"].to_list() == ["dog", "cat", "sun", "tree"]
    assert rows["failed"].null_count() == 0 and rows["max_selfsim"].null_count() == 0
    again = run.strategies(["composite", "selfsim"])
    assert set(again["method"]) == {"default:composite", "default:selfsim"}
    assert again.height == 8
    summary = summarise_planted(pl.concat([rows, again]))
    assert set(summary["method"]) == {"default", "default:composite", "default:selfsim"}
    assert (summary["n"] == 4).all()

    from selfexplain.evaluation.wordlists import concept_directions

    directions = concept_directions(tiny_lm, concepts, tiny_config.injection_layer)
    nll = scale_quality.label_nll(explainer, directions, ["dog", "cat", "sun", "tree"])
    assert nll.shape == (4, 5) and bool((nll > 0).all())
    choice = scale_quality.scale_choice_rows(run.results, concepts, nll, min_scale=run.min_scale)
    assert choice.height == 12
    assert all(s >= 1.0 for scales in choice["chosen_scales"] for s in scales)
    assert all(len(s) == 3 for s in choice["chosen_scales"])
    assert (choice["best_scale"] >= 1.0).all()
    assert (choice["top3_near"] | ~choice["top3_exact"]).all()  # exact implies near
    scale_summary = scale_quality.summarise_scale_choice(choice)
    chance = scale_summary.filter((pl.col("method") == "chance") & (pl.col("metric") == "top3_exact"))
    assert math.isclose(chance["value"][0], 3 / 4)  # 4 eligible scales
    curves = scale_quality.scale_curves(run.results, concepts)
    assert {"prompt", "scale", "hit", "n"} <= set(curves.columns)


def test_label_nll_matches_a_direct_forward(tiny_lm, explainer) -> None:
    """The cached, batched NLL equals a plain full forward of prompt + label with the injection."""
    from selfexplain.inject import replaced_at

    direction = torch.nn.functional.normalize(torch.randn(1, tiny_lm.d_model), dim=-1)
    nll = scale_quality.label_nll(explainer, direction, ["ab"])
    prompt = explainer.states["meaning"].prompt
    label = torch.tensor(tiny_lm.tokenizer("ab", add_special_tokens=False).input_ids)
    ids = torch.cat([prompt.input_ids, label])[None]
    j = 3
    with torch.inference_mode(), replaced_at(tiny_lm.layers[explainer.injection_layer],
                                             prompt.placeholder_positions,
                                             explainer.scales[j] * direction):
        logits = tiny_lm.model(input_ids=ids).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    n = len(prompt.input_ids)
    expected = -(logp[n - 1, label[0]] + logp[n, label[1]])
    assert torch.isclose(nll[0, j], expected, atol=1e-3)


def test_threshold_null_is_seeded_and_flags_are_scored(tiny_lm, explainer) -> None:
    a = thresholds.null_directions(explainer, 6, seed=3)
    b = thresholds.null_directions(explainer, 6, seed=3)
    assert torch.equal(a, b) and torch.allclose(a.norm(dim=-1), torch.ones(6), atol=1e-5)
    assert not torch.equal(a, thresholds.null_directions(explainer, 6, seed=4))
    res = thresholds.null_directions(explainer, 4, seed=0, kind="residual", layer=3)
    assert res.shape == (4, tiny_lm.d_model)
    # the post's flag: max self-similarity of both prompts, metric pass only
    post = SelfExplainer(tiny_lm, explainer.config.model_copy(update={"failure_metric": "selfsim"}))
    null = thresholds.null_distribution(post, 8, seed=0)
    assert set(null) == {"meaning", "repeat"} and null["meaning"].shape == (8,)
    # the metric-only pass agrees with the engine's own sweep
    results = post.explain(a[:2], [0, 1])
    direct = thresholds.max_selfsim(post, a[:2], "meaning")
    assert torch.allclose(direct, torch.tensor([r.max_selfsim for r in results]), atol=1e-5)
    rows = thresholds.threshold_rows(post, null, layer=2)
    assert rows.height == 2 and (rows["n_null"] == 8).all()
    assert set(rows["settings_hash"]) == {post.config.null_hash()}
    # the round-trip flag: the best round trip of each null direction's explanations
    trips = thresholds.null_distribution(explainer, 3, seed=0)
    assert set(trips) == {"meaning"}
    again = explainer.explain(thresholds.null_directions(explainer, 3, seed=0),
                              list(range(thresholds.NULL_FEATURE_BASE,
                                         thresholds.NULL_FEATURE_BASE + 3)))
    assert trips["meaning"].tolist() == pytest.approx([r.max_roundtrip for r in again])
    q = float(torch.quantile(null["meaning"].double(), 0.95))
    assert math.isclose(rows.filter(pl.col("prompt") == "meaning")["threshold"][0], q)

    quality = thresholds.flag_quality([0.0, 0.5, 0.001, 0.2], [False, True, True, False], 0.01)
    assert quality["precision"] == 0.5 and quality["recall"] == 0.5
    frame = pl.DataFrame({"method": ["m"] * 4, "max_selfsim": [0.0, 0.5, 0.001, 0.2],
                          "hit_top3": [False, True, True, False]})
    summary = thresholds.flag_summary(frame, {"0.01": 0.01, "high": 1.0})
    got = dict(zip(summary["metric"], summary["value"]))
    assert got["flag_precision@0.01"] == 0.5 and got["flag_recall@high"] == 1.0
    assert got["flag_rate@high"] == 1.0
    aucs = thresholds.selfsim_aurocs(frame, [0.0, 0.0, 0.0], method="m")
    got = dict(zip(aucs["metric"], aucs["value"]))
    assert got["auroc_vs_null"] == 0.875  # 3 of 4 items above every null value, one tied
    assert got["auroc_hit_top3"] == 0.75  # right 0.5, 0.001 vs wrong 0.0, 0.2: 3 of 4 pairs


def test_report_files(tmp_path) -> None:
    summary = summary_frame([
        summary_row("planted", "default", "hit_top3", 0.4, 50, 0.28, 0.54),
        summary_row("planted", "vocabproj", "hit_top3", 0.9, 50, 0.79, 0.96),
        summary_row("embedding", "default", "auroc", 0.7, 40, 0.58, 0.82),
        summary_row("scale_selection", "chance", "top3_exact", 0.1, 50, float("nan"), float("nan")),
    ])
    curves = {"default": pl.DataFrame({"prompt": ["meaning"] * 3, "scale": [1.0, 2.0, 3.0],
                                       "selfsim": [0.0, 0.1, 0.2], "entropy": [0.0, -1.0, -2.0],
                                       "composite": [0.0, 0.5, 0.3], "hit": [0.0, 0.5, 0.2]})}
    path = report.write_report(
        tmp_path / "out", summary, title="test", notes=["a note"], curves=curves,
        null={"meaning": [0.0, 0.01, 0.02, 0.05]}, thresholds={"meaning": 0.04},
        observed={"meaning words": [0.1, 0.2]})
    text = path.read_text()
    assert "# test" in text and "a note" in text and "| planted | vocabproj | hit_top3 | 0.900 | 50 |" in text
    for name in ("scores.png", "scale_curves.png", "null_hist.png", "summary.csv"):
        assert (tmp_path / "out" / name).stat().st_size > 0
        assert f"({name})" in text or name == "summary.csv"
    assert (tmp_path / "out" / "scores.png").read_bytes()[:4] == b"\x89PNG"
    table = report.text_table(summary)
    assert "95% CI" in table and "[0.790, 0.960]" in table and "chance" in table


def test_engine_flag_precision_and_recall_on_hand_made_rows():
    from selfexplain.evaluation.thresholds import engine_flag_summary

    rows = pl.DataFrame({
        "method": ["a"] * 5,
        "failed": [True, True, False, False, True],
        "hit_top3": [False, True, False, True, False],  # wrong: items 0, 2, 4
    })
    got = {r["metric"]: (r["value"], r["n"]) for r in engine_flag_summary(rows).to_dicts()}
    assert got["flag_rate@engine"] == (pytest.approx(3 / 5), 5)
    assert got["flag_precision@engine"] == (pytest.approx(2 / 3), 3)  # flagged 0, 1, 4; wrong 0, 4
    assert got["flag_recall@engine"] == (pytest.approx(2 / 3), 3)  # wrong 0, 2, 4; flagged 0, 4
