"""`selfexplain vector`: difference of means of last-token residuals, saved with metadata, read
back by `explain --vector`."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from cli.cli import main
from selfexplain.errors import InputError
from selfexplain.forward import residual_entering
from selfexplain.vectors import (
    as_chat,
    difference_of_means,
    load_vectors,
    read_prompt_lines,
    save_vector,
)


def test_difference_of_means_is_the_mean_last_token_residual_gap(tiny_lm):
    positive, negative = ["good day", "great fun", "nice cat"], ["bad day", "awful rain"]
    vector, stats = difference_of_means(tiny_lm, positive, negative, 2)

    def last(text):
        ids = tiny_lm.tokenizer(as_chat(tiny_lm, text), return_tensors="pt",
                                add_special_tokens=False).input_ids
        return residual_entering(tiny_lm, 2, ids)[0, -1].float()

    want = torch.stack([last(t) for t in positive]).mean(0) - torch.stack(
        [last(t) for t in negative]).mean(0)
    assert torch.allclose(vector, want, atol=1e-5)
    assert stats["positive_projection"] > stats["negative_projection"]
    assert 0.0 <= stats["separated"] <= 1.0
    with pytest.raises(InputError, match="same mean residual"):
        difference_of_means(tiny_lm, ["same", "same"], ["same", "same"], 2)


def test_prompt_files_and_vector_files(tmp_path):
    lines = tmp_path / "p.txt"
    lines.write_text("# a comment\n\nfirst prompt\n  second prompt  \n")
    assert read_prompt_lines(lines) == ["first prompt", "second prompt"]
    lines.write_text("only one\n")
    with pytest.raises(InputError, match="at least 2"):
        read_prompt_lines(lines)
    with pytest.raises(InputError, match="not found"):
        read_prompt_lines(tmp_path / "missing.txt")
    path = save_vector(tmp_path / "v.safetensors", torch.arange(1.0, 5.0), {"layer": "2"})
    assert load_vectors(path).tolist() == [[1.0, 2.0, 3.0, 4.0]]
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["layer"] == "2"


def test_cli_builds_the_shipped_sentiment_pair_and_explains_it(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "sentiment.safetensors"
    assert main(["vector", "--pair", "sentiment", "--model", tiny_model_dir, "--layer", "2",
                 "--out", str(out)]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert record["n_positive"] == record["n_negative"] == 16 and record["layer"] == 2
    assert load_vectors(out).shape == (1, 32)
    assert main(["explain", "--model", tiny_model_dir, "--vector", str(out), "--scales", "0:2:3",
                 "--samples", "1", "--max-new-tokens", "3"]) == 0
    assert "sentiment.safetensors" in capsys.readouterr().out
    assert main(["vector", "--positive", str(tmp_path / "x.txt"), "--out", str(out)]) != 0
    assert "needs --negative" in capsys.readouterr().err
