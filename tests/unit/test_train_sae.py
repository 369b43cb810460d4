"""SAE training on a tiny random model and a few hundred tokens: loads through sae-lens, seeded,
atomic; corpus handling; bad inputs give one clear error and leave nothing behind."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import build_tiny_model
from cli.cli import main as cli_main
from selfexplain.corpus import clean_wikitext, corpus_files, read_documents, token_chunks
from selfexplain.errors import InputError, SelfExplainError
from selfexplain.sae_trainer import TrainSaeConfig, encode
from selfexplain.train_sae import collect_activations, train_sae

WORDS = "the cat sat on a mat while dogs ran over hills and birds sang in tall green trees".split()


def write_corpus(folder: Path, n_docs: int = 40) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, offset in (("a.txt", 0), ("b.txt", 7)):
        docs = [" ".join(WORDS[(i + j + offset) % len(WORDS)] for j in range(12)) + "."
                for i in range(n_docs)]
        (folder / name).write_text("\n\f\n".join(docs))
    return folder


def tiny_config(**overrides) -> TrainSaeConfig:
    values = dict(layer=2, width=32, k=4, tokens=600, heldout_tokens=150, context=16,
                  batch_tokens=100, epochs=3, seed=0, collect_dtype="float32")
    values.update(overrides)
    return TrainSaeConfig.build(**values)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_lm):
    root = tmp_path_factory.mktemp("train")
    corpus = write_corpus(root / "corpus")
    result = train_sae(tiny_lm, corpus, tiny_config(), root / "sae")
    return root, corpus, result


def test_output_loads_through_sae_lens_as_topk(trained, tiny_lm):
    from sae_lens import SAE

    root, _corpus, result = trained
    assert sorted(p.name for p in (root / "sae").iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert not list(root.glob(".sae.*"))  # no temp folder left
    sae = SAE.load_from_disk(str(root / "sae"))
    assert type(sae).__name__ == "TopKSAE"
    assert sae.cfg.k == 4 and sae.cfg.d_sae == 32 and sae.cfg.d_in == tiny_lm.d_model
    assert sae.cfg.metadata.hook_name == "blocks.2.hook_resid_pre"
    assert sae.cfg.metadata.sae_lens_version
    # sae-lens encodes exactly as our trainer does (the input scale is folded into the weights)
    x = result.heldout.float()
    codes = sae.encode(x)
    values, indices = encode(result.sae, x)
    ours = torch.zeros_like(codes).scatter_(1, indices, values)
    assert torch.allclose(codes, ours, atol=2e-2 * float(ours.abs().max()))
    recon = sae.decode(codes)
    explained = 1 - (recon - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert float(explained.detach()) == pytest.approx(result.report.variance_explained, abs=0.02)
    # decoder rows are unit norm, so activations are residual norms
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(32), atol=1e-2)


def test_report_numbers_are_sane(trained):
    _root, _corpus, result = trained
    report = result.report
    assert report.layer == 2 and report.hook_name == "blocks.2.hook_resid_pre"
    assert report.train_tokens == 600
    assert report.heldout_tokens == result.heldout.shape[0] >= 150
    assert 0.2 < report.variance_explained <= 1.0
    assert 0 < report.l0 <= 4
    assert 0.0 <= report.dead_fraction < 1.0
    cfg = json.loads(((_root := trained[0]) / "sae" / "cfg.json").read_text())
    assert cfg["metadata"]["selfexplain_training"]["config"]["seed"] == 0


def test_saes_module_reads_the_layer(trained):
    from selfexplain.statstore import load_sae

    directions = load_sae(str(trained[0] / "sae"))
    assert directions.resid_layer == 2 and directions.d_sae == 32


def test_same_seed_same_weights(trained, tiny_lm):
    _root, corpus, result = trained
    again = train_sae(tiny_lm, corpus, tiny_config(), None)
    other = train_sae(tiny_lm, corpus, tiny_config(seed=1), None)
    assert torch.allclose(again.sae.W_dec, result.sae.W_dec, atol=1e-6)
    assert not torch.allclose(other.sae.W_dec, result.sae.W_dec, atol=1e-3)


def test_position_zero_is_dropped(tiny_lm):
    windows = torch.randint(20, 60, (3, 10))
    acts = collect_activations(tiny_lm, windows, [0, 2])
    assert acts[0].shape == (3 * 9, tiny_lm.d_model) and acts[2].shape == (3 * 9, tiny_lm.d_model)
    # layer 0's input is the token embedding: row 0 is window 0's token at position 1
    embed = tiny_lm.model.get_input_embeddings().weight
    assert torch.allclose(acts[0][0].float(), embed[windows[0, 1]], atol=1e-3)
    assert torch.allclose(acts[0][9].float(), embed[windows[1, 1]], atol=1e-3)


def test_token_chunks_hold_out_whole_documents(tmp_path, tiny_lm):
    corpus = tmp_path / "c"
    corpus.mkdir()
    docs = [f"document number {i:03d} " * 4 for i in range(50)]
    (corpus / "x.txt").write_text("\n\f\n".join(docs))
    split = token_chunks(corpus, tiny_lm.tokenizer, context=8, train_windows=10_000,
                         heldout_windows=10_000, seed=0)
    decode = tiny_lm.tokenizer.decode
    train_text = "".join(decode(w) for w in split.train.tolist())
    held_text = "".join(decode(w) for w in split.heldout.tolist())
    held_ids = {i for i in range(50) if f"number {i:03d}" in held_text}
    assert len(held_ids) == 5  # every 10th document
    assert not any(f"number {i:03d}" in train_text for i in held_ids)
    assert split.sources["x.txt"]["heldout"] == len(split.heldout)


def test_round_robin_balances_sources(tmp_path, tiny_lm):
    corpus = write_corpus(tmp_path / "c", n_docs=200)
    split = token_chunks(corpus, tiny_lm.tokenizer, context=16, train_windows=40,
                         heldout_windows=0, seed=0)
    assert split.sources == {"a.txt": {"train": 20, "heldout": 0},
                             "b.txt": {"train": 20, "heldout": 0}}


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("empty", "no non-empty .txt"),
    ("blank", "no non-empty .txt"),
    ("file", "not a folder"),
])
def test_bad_corpus_folder(tmp_path, case, message):
    path = tmp_path / case
    if case in ("empty", "blank"):
        path.mkdir()
        (path / "notes.md").write_text("not a .txt file")
    if case == "blank":
        (path / "a.txt").write_text("")
    if case == "file":
        path.write_text("x")
    with pytest.raises(InputError, match=message):
        corpus_files(path)


def test_unreadable_corpus_file(tmp_path, monkeypatch):
    folder = write_corpus(tmp_path / "c")

    def refuse(*_args, **_kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(InputError, match="cannot read corpus file .*Permission denied"):
        read_documents(folder / "a.txt")


def test_too_short_corpus(tmp_path, tiny_lm):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("tiny")
    with pytest.raises(InputError, match="too short"):
        train_sae(tiny_lm, tmp_path / "c", tiny_config(context=64), None)


def test_layer_out_of_range(tmp_path, tiny_lm):
    corpus = write_corpus(tmp_path / "c")
    with pytest.raises(InputError, match="layer 6 is out of range.*0..5"):
        train_sae(tiny_lm, corpus, tiny_config(layer=6), tmp_path / "sae")
    assert not (tmp_path / "sae").exists()


@pytest.mark.parametrize("overrides, message", [
    (dict(k=64, width=32), "must not exceed the width"),
    (dict(width=0), "width"),
    (dict(k=0), "k"),
    (dict(layer=-1), "layer"),
    (dict(tokens=0), "tokens"),
])
def test_nonsense_settings(overrides, message):
    with pytest.raises(InputError, match=message):
        tiny_config(**overrides)


def test_disk_full_leaves_nothing(tmp_path, tiny_lm, monkeypatch):
    import safetensors.torch

    corpus = write_corpus(tmp_path / "c")

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(SelfExplainError, match="No space left on device; nothing was written"):
        train_sae(tiny_lm, corpus, tiny_config(), tmp_path / "out" / "sae")
    assert list((tmp_path / "out").iterdir()) == []


def test_existing_folder_kept_unless_overwrite(tmp_path, tiny_lm):
    corpus = write_corpus(tmp_path / "c")
    out = tmp_path / "sae"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="already exists"):
        train_sae(tiny_lm, corpus, tiny_config(), out)
    assert (out / "keep.txt").read_text() == "mine"
    train_sae(tiny_lm, corpus, tiny_config(), out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]


def save_tiny_model(folder: Path) -> Path:
    lm = build_tiny_model("llama")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def test_cli_trains_and_writes_statistics(tmp_path, capsys, prefect_server):
    """`selfexplain train-sae` runs the train-default-sae flow (recorded by Prefect with the
    command's request), which writes the SAE and its statistics from the run's own held-out
    activations; the command prints the report."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    from selfexplain.feature_stats import load_feature_stats

    def flow_runs():
        with get_client(sync_client=True) as client:
            return client.read_flow_runs(flow_filter=FlowFilter(
                name=FlowFilterName(any_=["train-default-sae"])))

    model_dir = save_tiny_model(tmp_path / "model")
    corpus = write_corpus(tmp_path / "c")
    args = ["train-sae", "--model", str(model_dir), "--corpus", str(corpus), "--out",
            str(tmp_path / "sae"), "--layer", "1", "--width", "16", "--k", "2", "--tokens", "300",
            "--heldout-tokens", "100", "--context", "16", "--batch-tokens", "100", "--seed", "0"]
    before = {run.id for run in flow_runs()}
    assert cli_main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["hook_name"] == "blocks.1.hook_resid_pre"
    assert report["out_dir"] == str(tmp_path / "sae") and "stats_path" not in report
    new = [run for run in flow_runs() if run.id not in before]
    assert len(new) == 1 and new[0].state.is_completed()
    request = new[0].parameters["request"]
    assert request["build_corpus"] is False and request["train"]["width"] == 16
    stats = load_feature_stats(tmp_path / "sae")
    assert stats.height == 16
    assert 0 < stats["density"].sum() <= 2.0 + 1e-9  # at most k active per token
    # the statistics describe the run's own held-out activations
    assert stats["density"].sum() == pytest.approx(report["l0"], rel=1e-5)
    alive = stats.filter(stats["density"] > 0)
    assert report["single_token_fraction"] == pytest.approx(float(alive["single_token"].mean()))
    from selfexplain.statstore import load_sae

    inputs = load_sae(str(tmp_path / "sae")).inputs  # typical inputs ship beside the statistics
    assert inputs is not None and inputs.shape == (16, 32)  # the tiny model's width
    assert ((inputs.norm(dim=-1) > 0) == torch.tensor((stats["density"] > 0).to_list())).all()
    assert cli_main(args) == 2  # the folder exists now
    assert "already exists" in capsys.readouterr().err
    assert cli_main(args[:-4] + ["--k", "99", "--seed", "0"]) == 2
    assert "must not exceed the width" in capsys.readouterr().err


def test_cli_fails_fast_before_the_flow(tmp_path, capsys, monkeypatch):
    """A missing or empty corpus (never built by the command), an --out that is a file or holds
    files, a stop without a checkpoint folder: one error line before Prefect starts."""
    import flows.train_default_sae as flow_module

    monkeypatch.setattr(flow_module, "train_default_sae",
                        lambda request: pytest.fail("the flow started"))
    corpus = write_corpus(tmp_path / "c")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    base = ["train-sae", "--model", str(tmp_path / "no-model")]
    cases = [
        (["--corpus", str(tmp_path / "none"), "--out", str(tmp_path / "sae")],
         f"corpus folder {tmp_path / 'none'} does not exist"),
        (["--corpus", str(tmp_path / "empty"), "--out", str(tmp_path / "sae")],
         "holds no non-empty .txt file"),
        (["--corpus", str(corpus), "--out", str(tmp_path / "file")], "is a file"),
        (["--corpus", str(corpus), "--out", str(tmp_path / "full")],
         "already exists and is not empty: pass --overwrite"),
        (["--corpus", str(corpus), "--out", str(tmp_path / "sae"), "--stop-after-chunks", "1"],
         "--stop-after-chunks needs --checkpoint-dir: the state must go somewhere"),
    ]
    for flags, message in cases:
        assert cli_main(base + flags) == 2, flags
        errors = [line for line in capsys.readouterr().err.splitlines()
                  if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (flags, errors)
    assert not (tmp_path / "empty").joinpath("a.txt").exists()  # nothing was built
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_clean_wikitext():
    raw = ("{{Infobox|a={{nested}}}}'''Paris''' is the [[capital city|capital]] of [[France]]."
           "<ref>cite</ref> It has [[File:x.jpg|thumb|a [[caption]]]]museums.\n"
           "{| class=wikitable\n|-\n| cell\n|}\n\n== History ==\nOld.\n\n== References ==\nGone.")
    assert clean_wikitext(raw) == "Paris is the capital of France. It has museums.\n\nHistory\nOld."


def test_tasks_write_folder_and_statistics(tmp_path):
    """The Prefect tasks' logic (`.fn`): preflight, corpus reuse, training with the statistics of
    its own held-out activations, warehouse rows."""
    from prefect.logging import disable_run_logger

    from selfexplain.saes import DEFAULT_SAE_DIR, DEFAULT_SAE_RELEASE, folder_sae_id
    from selfexplain.feature_stats import load_feature_stats
    from tasks.train import (
        TrainSaeRequest,
        build_corpus_task,
        feature_stats_rows_task,
        preflight,
        train_sae_task,
    )

    model_dir = save_tiny_model(tmp_path / "model")
    corpus = str(write_corpus(tmp_path / "c"))
    out = str(tmp_path / "sae")
    request = TrainSaeRequest(model=str(model_dir), corpus_dir=corpus, out_dir=out,
                              train=tiny_config(layer=1))
    assert request.names() == ("local:sae", "sae")
    assert request.build_corpus and request.statistics  # the flow's defaults
    # the shipped default names its version in cfg.json (metadata.selfexplain_sae_id)
    assert TrainSaeRequest().names() == (DEFAULT_SAE_RELEASE, folder_sae_id(DEFAULT_SAE_DIR))
    with pytest.raises(InputError, match="invalid train"):
        TrainSaeRequest.build(train={"k": 0})
    with pytest.raises(InputError, match="^--stop-after-chunks needs --checkpoint-dir"):
        TrainSaeRequest.build(stop_after_chunks=2)
    assert preflight(request) is None  # nothing to resume from
    # the default flow builds a missing corpus itself: its preflight leaves the folder alone
    assert preflight(request.model_copy(update={"corpus_dir": str(tmp_path / "new")})) is None
    with disable_run_logger():
        assert build_corpus_task.fn(corpus) == corpus  # holds text: not rebuilt
        trained = train_sae_task.fn(request.model, corpus, out, request.train, False)
        rows = feature_stats_rows_task.fn(out, *request.names())
    report = trained.report
    assert report["hook_name"] == "blocks.1.hook_resid_pre" and report["out_dir"] == out
    stats = load_feature_stats(tmp_path / "sae")
    assert trained.stats_path == str(tmp_path / "sae" / "feature_stats.parquet")
    assert stats.height == 32
    # the statistics come from the trainer's own held-out activations
    assert sum(stats["density"]) == pytest.approx(report["l0"], rel=1e-5)
    assert 0 <= report["single_token_fraction"] <= 1
    assert rows.columns[:3] == ["release", "sae_id", "feature"] and rows.height == 32
    assert (tmp_path / "sae" / "typical_inputs.safetensors").is_file()
    with pytest.raises(InputError, match="already exists"):
        preflight(request)  # now the folder holds the SAE
    with disable_run_logger():
        again = train_sae_task.fn(request.model, corpus, str(tmp_path / "bare"), request.train,
                                  False, statistics=False)
    assert again.stats_path is None and "single_token_fraction" not in again.report
    assert sorted(p.name for p in (tmp_path / "bare").iterdir()) == [
        "cfg.json", "sae_weights.safetensors"]


def test_gcide_entry_is_plain_prose():
    from selfexplain.corpus import _gcide_entry

    entry = ['Abdomen \\Ab*do"men\\, n. [L. abdomen (a word of uncertain', '   etymol.): cf. F.',
             '   abdomen.]', '   1. (Anat.) The belly, or that part of the body between the',
             '      thorax and the pelvis; see {Abdominal ring}.', '      [1913 Webster]', '',
             '   2. (Zool.) The posterior section of the body.', '      [1913 Webster]']
    assert _gcide_entry(entry) == ("Abdomen n. 1. (Anat.) The belly, or that part of the body "
                                   "between the thorax and the pelvis; see Abdominal ring. 2. "
                                   "(Zool.) The posterior section of the body.")
    assert _gcide_entry(["00-database-info", "  This file was converted"]) == ""
    assert _gcide_entry(["   indented continuation only"]) == ""


def test_cli_resumes_an_interrupted_training(tmp_path, capsys, prefect_server):
    from safetensors.torch import load_file

    model_dir = save_tiny_model(tmp_path / "model")
    corpus = write_corpus(tmp_path / "c")
    base = ["train-sae", "--model", str(model_dir), "--corpus", str(corpus), "--layer", "1",
            "--width", "16", "--k", "2", "--tokens", "600", "--heldout-tokens", "100",
            "--context", "16", "--batch-tokens", "50", "--chunk-windows", "8", "--seed", "0",
            "--no-stats"]
    ckpt = str(tmp_path / "ckpt")
    assert cli_main(base + ["--out", str(tmp_path / "a")]) == 0
    assert cli_main(base + ["--out", str(tmp_path / "b"), "--stop-after-chunks", "2"]) == 2
    assert "needs --checkpoint-dir" in capsys.readouterr().err
    assert cli_main(base + ["--out", str(tmp_path / "b"), "--checkpoint-dir", ckpt,
                            "--stop-after-chunks", "2"]) == 0
    assert not (tmp_path / "b").exists() and "stopped after 2 chunks" in capsys.readouterr().out
    assert cli_main(base + ["--out", str(tmp_path / "b"), "--checkpoint-dir", ckpt]) == 0
    assert "resuming from" in capsys.readouterr().out
    a, b = (load_file(str(tmp_path / n / "sae_weights.safetensors")) for n in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
