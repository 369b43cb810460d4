"""The whole planted suite on the tiny model (core, CLI parsing, task bodies); one slow real run."""

from __future__ import annotations

import polars as pl
import pytest

from selfexplain.evaluation.suite import EvalRequest, eval_result_rows, run_evaluation


TINY = {"max_new_tokens": 3, "top_scales": 2, "samples_per_scale": 1, "batch_rows": 64}


@pytest.fixture(scope="module")
def tiny_output(tiny_lm, tmp_path_factory):
    from test_evaluation_real import bag_of_words

    request = EvalRequest(suite="planted", limit=3, classes=True, null_directions=4,
                          methods=("default", "vocabproj", "tokenchange"), overrides=TINY)
    runs = tmp_path_factory.mktemp("runs")
    return run_evaluation(tiny_lm, request, runs_dir=runs, embedder=bag_of_words), runs


def test_planted_suite_on_tiny_model(tiny_output) -> None:
    output, runs = tiny_output
    summary = output.summary
    methods = set(summary["method"])
    assert {"default", "vocabproj", "tokenchange", "default:composite", "default:selfsim",
            "default:entropy", "default:consensus"} <= methods
    words = summary.filter((pl.col("suite") == "planted") & (pl.col("metric") == "hit_top3"))
    assert (words["n"] == 3).all()
    assert ((words["ci_low"] <= words["value"] + 1e-9) & (words["value"] <= words["ci_high"] + 1e-9)).all()
    classes = summary.filter(pl.col("suite") == "planted_class")
    assert (classes["n"] == 10).all()
    assert {"scale_selection", "failure_flag", "planted_embedding",
            "planted_embedding_class"} <= set(summary["suite"])
    embedding = output.items["planted_embedding"]
    assert embedding.height == output.items["planted"].height  # one row per (method, concept)
    assert embedding["feature"].null_count() == 0
    assert set(output.null) == {"meaning (default)"}  # the round trip: meaning prompt only
    assert output.layer_thresholds.height == 1
    # the engine's own choice equals re-ranking its samples with its own strategy
    items = output.items["planted"]
    own = items.filter(pl.col("method") == "default").drop("method")
    again = items.filter(pl.col("method") == "default:roundtrip").drop("method")
    assert own.equals(again)
    # the run was saved and re-scores to the same rows
    from selfexplain.evaluation.planted import load_results

    loaded = load_results(runs / "planted_default_dev.json")
    assert loaded.frame("default").equals(items.filter(pl.col("method") == "default"))
    rows = eval_result_rows(output, eval_id="t", model_id="tiny")
    assert rows.height > 0 and set(rows["release"]) == {"planted"}
    assert set(rows["sae_id"]) == {"words_dev", "classes_dev"}


def test_cli_parses_and_validates() -> None:
    from cli.cli import build_parser
    from cli.evaluate import request_from_args
    from selfexplain.errors import InputError

    args = build_parser().parse_args(["evaluate", "--limit", "5", "--rerank", "none"])
    request = request_from_args(args)
    assert request.limit == 5 and request.rerank == () and "maxact" not in request.methods
    args = build_parser().parse_args(["evaluate", "--methods", "default,nope"])
    with pytest.raises(InputError, match="unknown method"):
        request_from_args(args)
    real = request_from_args(build_parser().parse_args(["evaluate", "--suite", "real"]))
    assert "maxact" in real.methods
    # quick by default: no faithful preset, no null, no best-scale check; --thorough adds them
    quick = request_from_args(build_parser().parse_args(["evaluate"]))
    assert "faithful" not in quick.methods and quick.null_directions == 0
    assert not quick.scale_quality
    thorough = request_from_args(build_parser().parse_args(["evaluate", "--thorough"]))
    assert "faithful" in thorough.methods and thorough.null_directions == 32
    assert thorough.scale_quality
    explicit = request_from_args(build_parser().parse_args(
        ["evaluate", "--methods", "faithful", "--null", "4"]))
    assert explicit.methods == ("faithful",) and explicit.null_directions == 4


def test_cli_fails_fast_before_the_flow_and_the_model(tmp_path, capsys, monkeypatch) -> None:
    """A bad SAE, device, reference file or warehouse is one error line from the preflight,
    before Prefect starts and before the (here missing) model would load."""
    import flows.evaluate as flow_module
    from cli.cli import main
    from selfexplain.evaluation.judge import ENV_KEY, ENV_MODEL, ENV_URL

    monkeypatch.setattr(flow_module, "evaluate", lambda params: pytest.fail("the flow started"))
    for name in (ENV_URL, ENV_MODEL, ENV_KEY):
        monkeypatch.delenv(name, raising=False)
    base = ["evaluate", "--model", str(tmp_path / "no-model")]
    broken = tmp_path / "refs.jsonl"
    broken.write_text('{"index": 1, "description": "dogs"}\n{oops}\n')
    good = tmp_path / "refs.csv"
    good.write_text("feature,description\n1,dogs\n")
    garbage = tmp_path / "w.duckdb"
    garbage.write_bytes(b"not a database" * 100)
    cases = [
        (["--suite", "real", "--sae", "no-such-sae"], "SAE 'no-such-sae' is neither `default`"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--threads", "-1"], "invalid threads"),
        (["--references", str(broken)], "refs.jsonl line 2 is not JSON"),
        (["--references", str(tmp_path / "none.csv")], "reference label file not found"),
    ]
    for flags, message in cases:
        assert main(base + flags) == 2, flags
        errors = [line for line in capsys.readouterr().err.splitlines()
                  if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (flags, errors)
    # a judge configured: its cache (the warehouse's judge_response rows) is read up front
    monkeypatch.setenv(ENV_URL, "http://127.0.0.1:9/v1")
    assert main(base + ["--references", str(good)]) == 2
    assert "SELFEXPLAIN_JUDGE_MODEL" in capsys.readouterr().err  # the endpoint is checked too
    monkeypatch.setenv(ENV_MODEL, "judge")
    assert main(base + ["--references", str(good), "--warehouse", str(garbage)]) == 2
    assert str(garbage) in capsys.readouterr().err


def test_task_bodies(tiny_lm, tmp_path, monkeypatch) -> None:
    from prefect.logging import disable_run_logger

    import tasks.evaluate as task_module

    monkeypatch.setattr(task_module, "cached_model", lambda spec, *args: tiny_lm)
    request = EvalRequest(limit=2, classes=False, null_directions=0, rerank=(),
                          methods=("default", "vocabproj"), overrides=TINY,
                          scale_quality=False, planted_embedding=False)
    with disable_run_logger():
        output = task_module.evaluate_suite.fn(request, str(tmp_path / "runs"))
        frames = task_module.evaluation_rows.fn(output, "eval-test")
    assert (tmp_path / "runs" / "planted_default_dev.json").is_file()
    assert frames["eval_result"].height > 0 and frames["layer_threshold"].height == 0
    from selfexplain.warehouse import Warehouse

    with Warehouse(":memory:") as warehouse:
        counts = warehouse.write(frames)
    assert counts["eval_result"] == frames["eval_result"].height


@pytest.mark.slow
def test_planted_suite_on_the_default_model() -> None:
    """Eight DEV words on the real default model: sane rows, not a quality threshold."""
    import torch

    from selfexplain.evaluation.wordlists import load_words
    from selfexplain.models import load_model

    torch.set_num_threads(1)
    lm = load_model("default")
    request = EvalRequest(limit=8, classes=False, null_directions=8,
                          methods=("default", "vocabproj", "tokenchange"),
                          planted_embedding=False)
    output = run_evaluation(lm, request)
    items = output.items["planted"]
    names = [c.name for c in load_words("dev", 8)]
    for method in ("default", "vocabproj", "tokenchange", "default:composite"):
        part = items.filter(pl.col("method") == method)
        assert part["name"].to_list() == names
        assert part["hit_top3"].null_count() == 0
        assert all(len(labels) <= 3 for labels in part["labels"])
    own = items.filter(pl.col("method") == "default")
    assert all(len(labels) >= 1 for labels in own["labels"])  # the model says something
    assert (own["max_selfsim"].is_finite()).all() and (own["max_roundtrip"].is_finite()).all()
    summary = output.summary
    assert (summary.filter(pl.col("suite") == "planted")["n"] == 8).all()
    thresholds = output.layer_thresholds
    assert set(thresholds["prompt"]) == {"meaning"} and (thresholds["n_null"] == 8).all()


@pytest.mark.parametrize("argv", [
    ["evaluate", "--suite", "real", "--sae", "no-such-sae"],
    ["train-sae", "--corpus", "/nonexistent-corpus", "--out", "/nonexistent-out"],
    ["relabel", "--sae", "default", "--features", "999999", "--warehouse", "/nonexistent/w.duckdb"],
    ["relabel", "--sae", "no-such-sae", "--features", "0", "--warehouse", "/nonexistent/w.duckdb"],
])
def test_a_typo_answers_before_prefect_is_imported(argv) -> None:
    """An SAE of no known form, a feature beyond the SAE and a missing corpus are refused before
    `import prefect` (a second and a half of the 5 s that bench.errors allows: these took 5.1-5.5
    s on a slow box)."""
    import subprocess
    import sys

    probe = ("import sys; from cli.cli import main; code = main(sys.argv[1:]); "
             "print(code, 'prefect' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.split()[-2:] == ["2", "False"], (done.stdout, done.stderr[-500:])
    assert done.stderr.strip().splitlines()[-1].startswith("error:")
