"""`collect`: streamed statistics equal a brute-force computation over every activation at once;
a killed collect resumes to the same result; the held-out sample is the exact bottom-k sample;
bad input ends in one line before anything is written."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load_file, save_file

from selfexplain.collect import CollectConfig, example_hash
from selfexplain.documents import open_documents, token_windows
from selfexplain.encoders import load_encoder
from selfexplain.errors import InputError, SaeLoadError
from selfexplain.statstore import load_sae
from selfexplain.feature_stats import feature_stats, typical_inputs
from selfexplain.statstore import collect_statistics, find_stats
from selfexplain.train_sae import collect_activations
from tests.conftest import write_sae_folder

WORDS = ["cat", "dog", "sun", "tree", "run", "blue", "stone", "river"]
CONFIG = CollectConfig(tokens=2400, heldout_tokens=1200, context=24, chunk_tokens=230,
                       heldout_per_latent=6, random_examples=9, example_tokens=5,
                       checkpoint_seconds=0)


@pytest.fixture(autouse=True)
def stats_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SELFEXPLAIN_STATS", str(tmp_path / "stats"))
    return tmp_path / "stats"


def make_corpus(folder: Path, n_docs: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("first", "second"):
        docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30)))
                for _ in range(n_docs)]
        (folder / f"{name}.txt").write_text("\n\f\n".join(docs))
    return folder


def sparse_sae(path: Path, lm, d_sae: int = 12, d_in: int | None = None) -> Path:
    """A standard (ReLU) SAE whose encoder bias leaves each latent silent on ~85% of tokens."""
    write_sae_folder(path, d_in or lm.d_model, d_sae, hook_name="blocks.1.hook_resid_post")
    return path if d_in is not None else sparsify(path, lm)


def sparsify(path: Path, lm, silent: float = 0.85) -> Path:
    """Set an SAE folder's encoder bias so each latent is silent on `silent` of the tokens."""
    weights = load_file(str(path / "sae_weights.safetensors"))
    ids = torch.tensor([lm.tokenizer.encode(" ".join(WORDS * 3))])
    layer = load_encoder(str(path)).resid_layer
    acts = collect_activations(lm, ids, [layer], progress=False)[layer].float()
    weights["b_enc"] = -torch.quantile(acts @ weights["W_enc"], silent, dim=0)
    save_file(weights, str(path / "sae_weights.safetensors"))
    return path


def brute_force(lm, sae_dir: Path, corpus: Path, split: str, tokens: int, context: int):
    """Every window of the split at once: (windows, activations, dense codes)."""
    source = open_documents(str(corpus))
    per = context - 1
    windows = []
    for window in token_windows(source, split, lm.tokenizer, context):
        if len(windows) >= -(-tokens // per):
            break
        windows.append(window)
    windows = torch.tensor(windows)
    encoder = load_encoder(str(sae_dir))
    acts = collect_activations(lm, windows, [encoder.resid_layer])[encoder.resid_layer]
    return windows, acts, encoder.encode(acts.float())


def test_collect_equals_brute_force(tiny_lm, tmp_path):
    sae_dir = sparse_sae(tmp_path / "sae", tiny_lm)
    corpus = make_corpus(tmp_path / "corpus")
    result = collect_statistics(tiny_lm, str(sae_dir), str(corpus), CONFIG)
    got = pl.read_parquet(result.folder / "feature_stats.parquet")

    windows, acts, codes = brute_force(tiny_lm, sae_dir, corpus, "train", CONFIG.tokens, 24)
    assert result.manifest["train_tokens"] == acts.shape[0] > CONFIG.chunk_tokens * 5
    rows, feats = torch.nonzero(codes > 0, as_tuple=True)
    per = windows.shape[1] - 1
    flat = (rows // per) * windows.shape[1] + rows % per + 1
    want = feature_stats(windows, flat, feats, codes[rows, feats], d_sae=codes.shape[1],
                         n_tokens=acts.shape[0], decode=tiny_lm.tokenizer.decode)
    assert 0.02 < float(want["density"].mean()) < 0.5  # sparse, and every latent is exercised
    for column in ("feature", "top_tokens", "single_token", "top_contexts"):
        assert got[column].to_list() == want[column].to_list(), column
    for column in ("density", "mean_activation", "max_activation", "top_token_share"):
        np.testing.assert_allclose(got[column].to_numpy(), want[column].to_numpy(), rtol=1e-9,
                                   atol=1e-12, err_msg=column)

    class Sae:  # what stats.typical_inputs needs of a sae-lens SAE
        cfg = type("cfg", (), {"d_sae": codes.shape[1]})
        encode = staticmethod(load_encoder(str(sae_dir)).encode)

    inputs = load_file(str(result.folder / "typical_inputs.safetensors"))["typical_inputs"]
    expected = typical_inputs(Sae, acts)
    torch.testing.assert_close(inputs.float(), expected.half().float(), atol=2e-3, rtol=2e-3)
    # per-token activations of each top context: the firing token carries the context's value
    window = got["top_context_windows"][0][0]
    assert window["activations"][window["at"]] == pytest.approx(got["max_activation"][0])
    dense = {(int(r), int(f)): float(codes[r, f]) for r, f in zip(rows, feats)}
    assert any(a > 0 for i, a in enumerate(window["activations"]) if i != window["at"]) or \
        len([k for k in dense if k[1] == 0]) == 1


def test_heldout_sample_is_the_exact_bottom_k(tiny_lm, tmp_path):
    sae_dir = sparse_sae(tmp_path / "sae", tiny_lm)
    corpus = make_corpus(tmp_path / "corpus", n_docs=80)
    result = collect_statistics(tiny_lm, str(sae_dir), str(corpus), CONFIG)
    latents = pl.read_parquet(result.folder / "heldout_latents.parquet")
    examples = pl.read_parquet(result.folder / "heldout_examples.parquet")

    windows, acts, codes = brute_force(tiny_lm, sae_dir, corpus, "heldout",
                                       CONFIG.heldout_tokens, 24)
    e, per = CONFIG.example_tokens, windows.shape[1] - 1
    per_window = -(-per // e)
    rows = torch.arange(acts.shape[0])
    example = (rows // per) * per_window + (rows % per) // e
    n_examples = windows.shape[0] * per_window
    maxes = torch.zeros(n_examples, codes.shape[1]).scatter_reduce_(
        0, example[:, None].expand_as(codes), codes, "amax")
    hashes = example_hash(torch.arange(n_examples), result.manifest["seed"])
    assert latents["n_fired"].to_list() == (maxes > 0).sum(0).tolist()
    for f in range(codes.shape[1]):
        firing = torch.nonzero(maxes[:, f] > 0).flatten().tolist()
        want = sorted(firing, key=lambda i: (int(hashes[i]), i))[:CONFIG.heldout_per_latent]
        assert latents["examples"][f].to_list() == want
        np.testing.assert_allclose(latents["max_activations"][f].to_numpy(),
                                   maxes[want, f].numpy(), rtol=1e-6)
        for j, ex in enumerate(want):  # per-token activations of each sampled example
            rows_of = torch.nonzero(example == ex).flatten()
            active = [(int((r % per) % e), float(codes[r, f])) for r in rows_of if codes[r, f] > 0]
            assert latents["positions"][f][j].to_list() == [p for p, _ in active]
            np.testing.assert_allclose(latents["activations"][f][j].to_list(),
                                       [v for _, v in active], rtol=1e-6)
    pool = sorted(range(n_examples), key=lambda i: (int(hashes[i]), i))[:CONFIG.random_examples]
    assert sorted(examples.filter(pl.col("random"))["example"].to_list()) == sorted(pool)
    # every stored example knows every latent firing in it (exact negatives)
    for row in examples.iter_rows(named=True):
        firing = torch.nonzero(maxes[row["example"]] > 0).flatten().tolist()
        assert row["features"] == firing
        w, j = divmod(row["example"], per_window)
        assert row["tokens"] == windows[w, 1 + j * e:min(1 + (j + 1) * e, 24)].tolist()


def test_killed_collect_resumes_to_the_same_result(tiny_lm, tmp_path, stats_cache):
    sae_dir = sparse_sae(tmp_path / "sae", tiny_lm)
    corpus = make_corpus(tmp_path / "corpus")
    whole = collect_statistics(tiny_lm, str(sae_dir), str(corpus), CONFIG)
    files = {p.name: p.read_bytes() for p in whole.folder.iterdir() if p.suffix != ".json"}
    for stop in (3, 13):  # mid-train, and mid-held-out (the train phase has 11 chunks)
        assert collect_statistics(tiny_lm, str(sae_dir), str(corpus), CONFIG,
                                  force=True, stop_after_chunks=stop) is None
        assert not (whole.folder / "manifest.json").exists()
        assert (whole.folder / "state.pt").exists()
        again = collect_statistics(tiny_lm, str(sae_dir), str(corpus), CONFIG)
        assert again.resumed and not again.reused
        for name, data in files.items():
            if name.endswith(".parquet"):
                assert pl.read_parquet(again.folder / name).equals(
                    pl.read_parquet(whole.folder / name)), name
            else:
                assert (again.folder / name).read_bytes() == data, name
        assert not (again.folder / "state.pt").exists()
    reused = collect_statistics(tiny_lm, str(sae_dir), str(corpus), CONFIG)
    assert reused.reused


def test_collected_statistics_reach_every_loader(tiny_lm, tmp_path):
    """A bare folder gets its typical inputs and statistics from the cache, by its weights: the
    same SAE copied elsewhere finds them too, and the injected key changes."""
    sae_dir = sparse_sae(tmp_path / "sae", tiny_lm)
    before = load_sae(str(sae_dir))
    assert before.inputs is None and before.stats_dir is None
    assert before.injected("auto") == "decoder"
    collect_statistics(tiny_lm, str(sae_dir), str(make_corpus(tmp_path / "corpus")), CONFIG)
    after = load_sae(str(sae_dir))
    assert after.inputs is not None and after.inputs.shape == after.decoder.shape
    assert after.injected("auto").startswith("input:")
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("cfg.json", "sae_weights.safetensors"):
        (copy / name).write_bytes((sae_dir / name).read_bytes())
    assert find_stats(load_sae(str(copy), statistics=False)).folder == Path(after.stats_dir)
    directions, kept, _ = after.unit_directions([0, 1], "auto")
    expected = after.inputs[[0, 1]] / after.inputs[[0, 1]].norm(dim=-1, keepdim=True)
    torch.testing.assert_close(directions, expected)


def test_bare_safetensors_collects_with_flags(tiny_lm, tmp_path):
    sae_dir = sparse_sae(tmp_path / "sae", tiny_lm)
    weights = load_file(str(sae_dir / "sae_weights.safetensors"))
    bare = tmp_path / "bare.safetensors"
    save_file(weights, str(bare))
    corpus = make_corpus(tmp_path / "corpus")
    with pytest.raises(SaeLoadError, match="--layer"):
        collect_statistics(tiny_lm, str(bare), str(corpus), CONFIG)
    result = collect_statistics(tiny_lm, str(bare), str(corpus), CONFIG, layer=2)
    folder_result = collect_statistics(tiny_lm, str(sae_dir), str(corpus), CONFIG)
    # the folder's hook blocks.1.hook_resid_post reads the residual entering block 2: the same
    assert pl.read_parquet(result.folder / "feature_stats.parquet")["top_contexts"].to_list() == \
        pl.read_parquet(folder_result.folder / "feature_stats.parquet")["top_contexts"].to_list()
    decoder_only = tmp_path / "decoder_only.safetensors"
    save_file({"W_dec": weights["W_dec"]}, str(decoder_only))
    with pytest.raises(SaeLoadError, match="no W_enc"):
        collect_statistics(tiny_lm, str(decoder_only), str(corpus), CONFIG, layer=2)


@pytest.mark.parametrize("case", ["width", "hook", "beyond", "empty", "short", "corrupt"])
def test_bad_input_is_one_line_and_writes_nothing(tiny_lm, tmp_path, stats_cache, case):
    corpus = make_corpus(tmp_path / "corpus")
    sae_dir = sparse_sae(tmp_path / "sae", tiny_lm)
    if case == "width":
        sae_dir = sparse_sae(tmp_path / "wide", tiny_lm, d_in=tiny_lm.d_model + 8)
    elif case in ("hook", "beyond"):
        cfg = json.loads((sae_dir / "cfg.json").read_text())
        cfg["metadata"]["hook_name"] = ("blocks.1.hook_mlp_out" if case == "hook"
                                        else "blocks.5.hook_resid_post")  # reads the output of the last block
        (sae_dir / "cfg.json").write_text(json.dumps(cfg))
    elif case == "empty":
        corpus = tmp_path / "empty"
        corpus.mkdir()
        (corpus / "a.txt").write_text("")
    elif case == "short":
        corpus = tmp_path / "short"
        corpus.mkdir()
        (corpus / "a.txt").write_text("\n\f\n".join(["cat dog"] * 12))
    elif case == "corrupt":
        (sae_dir / "sae_weights.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises((InputError, SaeLoadError)) as err:
        collect_statistics(tiny_lm, str(sae_dir), str(corpus), CONFIG)
    message = str(err.value)
    assert "\n" not in message
    expected = {"width": "width", "hook": "residual-stream", "beyond": "blocks 0..5",
                "empty": "no non-empty", "short": "tokens in", "corrupt": "cannot load"}[case]
    assert expected in message
    if case == "short":
        assert "held" in message or "training" in message
    assert not any(stats_cache.rglob("*.parquet"))
    assert not any(stats_cache.rglob("state.pt"))


def test_corpus_sources_split_by_document(tmp_path, tiny_lm):
    rows = [{"text": f"document {i} " + "word " * 5, "split": "test" if i % 4 == 0 else "train"}
            for i in range(20)]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    parquet = tmp_path / "docs.parquet"
    pl.DataFrame(rows).write_parquet(parquet)
    for spec in (jsonl, parquet):
        source = open_documents(str(spec))
        held = [d for s in source.streams("heldout").values() for d in s]
        train = [d for s in source.streams("train").values() for d in s]
        assert held == [r["text"].strip() for r in rows if r["split"] == "test"]
        assert len(train) == 15 and not set(held) & set(train)
    plain = tmp_path / "plain.jsonl"
    plain.write_text("\n".join(json.dumps({"body": r["text"]}) for r in rows))
    with pytest.raises(InputError, match="--text-column"):
        open_documents(str(plain))
    source = open_documents(str(plain), text_column="body")
    assert len([d for s in source.streams("heldout").values() for d in s]) == 2  # every 10th
    with pytest.raises(InputError, match="neither"):
        open_documents(str(tmp_path / "missing"))
    # the embedded sample: the default SAE's own split, in training and held-out rows
    embedded = open_documents("default")
    assert set(embedded.streams("train")) == {"gcide", "pydocs", "shakespeare", "wikipedia",
                                              "wordnet"}
    first_held = next(iter(embedded.streams("heldout")["wikipedia"]))
    assert first_held not in set(embedded.streams("train")["wikipedia"])


def test_cli_collect_then_reuse_and_bad_input(tiny_lm, tiny_model_dir, tmp_path, capsys):
    from cli.cli import main

    sae_dir = sparse_sae(tmp_path / "sae", tiny_lm)
    corpus = make_corpus(tmp_path / "corpus")
    args = ["collect", "--sae", str(sae_dir), "--model", tiny_model_dir, "--corpus", str(corpus),
            "--tokens", "600", "--heldout-tokens", "200", "--context", "24"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("collected: ") and "statistics: " in out
    assert main(args) == 0 and capsys.readouterr().out.startswith("reused (already collected)")
    assert load_sae(str(sae_dir)).inputs is not None
    assert main(["collect", "--sae", str(sae_dir), "--model", tiny_model_dir, "--corpus",
                 str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: corpus") and "neither" in err[0]
