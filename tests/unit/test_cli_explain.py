"""`selfexplain explain` on a tiny model saved to disk: JSON output and one-line errors."""

import json

import numpy as np
import pytest

from cli.cli import main


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from tests.conftest import build_tiny_model

    lm = build_tiny_model("llama")
    path = tmp_path_factory.mktemp("tiny_model")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


def test_explain_vector_json(tiny_model_dir, tmp_path, capsys):
    vectors = tmp_path / "v.npy"
    np.save(vectors, np.random.default_rng(0).normal(size=(2, 32)).astype(np.float32))
    code = main(["explain", "--model", str(tiny_model_dir), "--vector", str(vectors), "--json",
                 "--max-new-tokens", "4", "--scales", "0,0.5,1,2"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2
    for row in lines:
        assert {"feature", "explanations", "recovered_token", "failed", "max_selfsim"} <= set(row)
        for expl in row["explanations"]:
            assert {"text", "scale", "composite"} <= set(expl)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_explain_in_either_precision(tiny_model_dir, capsys, precision):
    code = main(["explain", "--model", str(tiny_model_dir), "--word", " dog", "--json",
                 "--max-new-tokens", "4", "--scales", "0,0.5,1,2", "--precision", precision])
    assert code == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["name"] == " dog" and row["explanations"]


def test_explain_sae_text_output(tiny_model_dir, tmp_path, capsys):
    from tests.conftest import write_sae_folder

    sae = write_sae_folder(tmp_path / "sae", 32, 8)
    code = main(["explain", "--model", str(tiny_model_dir), "--sae", str(sae), "--features", "1,3",
                 "--max-new-tokens", "4", "--scales", "0,0.5,1,2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "feature 1" in out and "feature 3" in out and "token:" in out


@pytest.mark.parametrize("argv, message", [
    (["--sae", "SAE", "--features", "5-2"], "reversed"),
    (["--sae", "SAE", "--features", "99"], "out of range"),
    (["--sae", "SAE"], "needs --features"),
    (["--vector", "missing.npy"], "vector file not found"),
    (["--sae", "SAE", "--features", "0", "--scales", "3,1"], "not strictly increasing"),
    (["--sae", "SAE", "--features", "0", "--placeholder", "XY"], "not a single token"),
    (["--sae", "nope-release/blocks.0", "--features", "0"], "unknown SAE release"),
    (["--sae", "SAE", "--features", "0", "--device", "tpu"], "unknown device 'tpu'"),
])
def test_bad_input_one_line_error(tiny_model_dir, tmp_path, capsys, argv, message):
    from tests.conftest import write_sae_folder

    sae = str(write_sae_folder(tmp_path / "sae", 32, 8))
    argv = [sae if a == "SAE" else a for a in argv]
    code = main(["explain", "--model", str(tiny_model_dir), *argv, "--max-new-tokens", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and message in err[-1]


def test_missing_model_folder(tmp_path, capsys):
    code = main(["explain", "--model", str(tmp_path), "--word", " dog"])
    assert code == 2 and "not a transformers model" in capsys.readouterr().err
