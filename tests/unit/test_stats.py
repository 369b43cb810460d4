"""Feature statistics on a planted dataset (every number known in advance), VocabProj on a planted
unembedding, the parquet loader, the warehouse table, and `selfexplain show`."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import polars as pl
import pytest
import torch

from tests.conftest import build_tiny_model, build_tiny_tokenizer
from cli.cli import main as cli_main
from selfexplain.errors import InputError
from selfexplain.feature_stats import (
    SCHEMA,
    feature_stats,
    load_feature_stats,
    vocab_projection,
    warehouse_rows,
    write_feature_stats,
)

SQL_FILE = Path(__file__).resolve().parents[2] / "sql" / "tables" / "050_feature_stats.sql"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def decode_with(tokenizer):
    return lambda ids: tokenizer.decode(ids)


def planted(tokenizer):
    """Two windows of 8 characters and hand-placed activations of 4 features (3 is dead)."""
    texts = ["abcdefgh", "xbxdxfxx"]
    windows = torch.tensor([tokenizer.encode(t, add_special_tokens=False) for t in texts])
    assert windows.shape == (2, 8)
    at = lambda seq, pos: seq * 8 + pos  # noqa: E731  flat index into windows
    entries = [
        # feature 0: three firings on different tokens (c, f in window 0; f in window 1)
        (at(0, 2), 0, 1.0), (at(0, 5), 0, 2.0), (at(1, 5), 0, 3.0),
        # feature 1: fires on six different tokens, 0.5 each
        *[(at(0, p), 1, 0.5) for p in range(1, 7)],
        # feature 2: five firings on "x" and one on "b": single-token
        (at(1, 2), 2, 1.0), (at(1, 4), 2, 1.0), (at(1, 6), 2, 1.0), (at(1, 7), 2, 1.0),
        (at(1, 0), 2, 4.0), (at(1, 1), 2, 1.0),
        # entries that must be ignored: zero and negative activations
        (at(0, 3), 3, 0.0), (at(0, 4), 3, -1.0),
    ]
    index, features, values = (torch.tensor(c) for c in zip(*entries))
    return windows, index, features, values.float()


def test_planted_statistics_are_exact(tokenizer):
    windows, index, features, values = planted(tokenizer)
    # Shuffle the triples: the result must not depend on their order.
    perm = torch.randperm(len(index), generator=torch.Generator().manual_seed(0))
    frame = feature_stats(
        windows, index[perm], features[perm], values[perm], d_sae=4, n_tokens=14,
        decode=decode_with(tokenizer), vocabproj=[["v0"], ["v1"], ["v2"], ["v3"]],
    )
    assert frame.schema == pl.Schema(SCHEMA)
    rows = {r["feature"]: r for r in frame.to_dicts()}
    assert list(frame["feature"]) == [0, 1, 2, 3]

    f0 = rows[0]
    assert f0["density"] == pytest.approx(3 / 14)
    assert f0["mean_activation"] == pytest.approx(2.0)
    assert f0["max_activation"] == pytest.approx(3.0)
    assert f0["top_contexts"] == [
        {"text": "xbxdx«f»xx", "activation": 3.0},
        {"text": "abcde«f»gh", "activation": 2.0},
        {"text": "ab«c»defg", "activation": 1.0},
    ]
    assert f0["top_tokens"] == ["f", "c"]  # f carries 5.0 of 6.0
    assert f0["top_token_share"] == pytest.approx(5 / 6)
    assert f0["single_token"] is False  # dominated by one token, but fired only 3 times
    assert f0["vocabproj_tokens"] == ["v0"]

    f1 = rows[1]
    assert f1["density"] == pytest.approx(6 / 14)
    assert f1["mean_activation"] == pytest.approx(0.5)
    assert f1["top_token_share"] == pytest.approx(1 / 6)
    assert f1["single_token"] is False
    # equal mass: ties keep text order
    assert f1["top_tokens"] == ["b", "c", "d", "e", "f", "g"]

    f2 = rows[2]
    assert f2["density"] == pytest.approx(6 / 14)
    assert f2["mean_activation"] == pytest.approx(9 / 6)
    assert f2["max_activation"] == pytest.approx(4.0)
    assert f2["top_tokens"] == ["x", "b"]
    assert f2["top_token_share"] == pytest.approx(8 / 9)
    assert f2["single_token"] is True
    assert f2["top_contexts"][0] == {"text": "«x»bxdx", "activation": 4.0}
    assert [c["activation"] for c in f2["top_contexts"]] == [4.0, 1.0, 1.0, 1.0, 1.0, 1.0]

    dead = rows[3]
    assert (dead["density"], dead["mean_activation"], dead["max_activation"]) == (0.0, 0.0, 0.0)
    assert dead["top_tokens"] == [] and dead["top_contexts"] == []
    assert dead["top_token_share"] == 0.0 and dead["single_token"] is False


def test_context_window_is_cut_and_top_contexts_capped(tokenizer):
    text = "".join("abcdefghijklmnopqrstuvwxyz"[i % 26] for i in range(40))
    windows = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
    positions = list(range(1, 40))
    frame = feature_stats(
        windows, torch.tensor(positions), torch.zeros(39, dtype=torch.long),
        torch.tensor([float(p) for p in positions]), d_sae=1, n_tokens=39,
        decode=decode_with(tokenizer),
    )
    contexts = frame["top_contexts"][0].to_list()
    assert len(contexts) == 20
    assert contexts[0] == {"text": "bcdefghijklm«n»", "activation": 39.0}  # 12 left, end of text
    assert contexts[1]["text"] == "abcdefghijkl«m»n"
    assert frame["vocabproj_tokens"][0].to_list() == []


def test_no_tokens_is_an_error(tokenizer):
    windows = torch.zeros(1, 4, dtype=torch.long)
    empty = torch.zeros(0, dtype=torch.long)
    with pytest.raises(InputError, match="at least one held-out token"):
        feature_stats(windows, empty, empty, empty.float(), d_sae=2, n_tokens=0,
                      decode=decode_with(tokenizer))


def test_vocab_projection_reads_the_planted_unembedding():
    lm = build_tiny_model("llama", seed=3)
    tok = lm.tokenizer
    t, u, v = (tok.convert_tokens_to_ids(c) for c in "tuv")
    with torch.no_grad():
        unembed = lm.model.get_output_embeddings().weight
        unembed.zero_()
        unembed[t, 3] = 2.0
        unembed[u, 3] = 1.0
        unembed[v, 3] = -1.0
        lm.model.model.norm.weight.fill_(1.0)
    direction = torch.zeros(1, lm.d_model)
    direction[0, 3] = 1.0
    assert vocab_projection(lm, direction, top=2) == [["t", "u"]]
    with torch.no_grad():  # the final norm's gain is part of the projection
        lm.model.model.norm.weight[3] = -1.0
    assert vocab_projection(lm, direction, top=1) == [["v"]]


def test_parquet_round_trip_and_loader_errors(tmp_path, tokenizer):
    frame = feature_stats(*planted(tokenizer), d_sae=4, n_tokens=14, decode=decode_with(tokenizer))
    write_feature_stats(frame, tmp_path)
    assert load_feature_stats(tmp_path).equals(frame)
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(InputError, match="no feature statistics"):
        load_feature_stats(tmp_path / "elsewhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "feature_stats.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="not a readable statistics file"):
        load_feature_stats(tmp_path / "bad")


def test_sql_table_holds_warehouse_rows(tokenizer):
    frame = feature_stats(*planted(tokenizer), d_sae=4, n_tokens=14, decode=decode_with(tokenizer))
    rows = warehouse_rows(frame, release="rel", sae_id="sae")
    con = duckdb.connect()
    for _ in range(2):  # idempotent
        con.execute(SQL_FILE.read_text())
    con.register("incoming", rows)
    con.execute("INSERT INTO feature_stats SELECT * FROM incoming")
    back = con.sql("SELECT * FROM feature_stats ORDER BY feature").pl()
    assert back["top_contexts"].to_list() == frame["top_contexts"].to_list()
    assert back["top_tokens"].to_list() == frame["top_tokens"].to_list()
    with pytest.raises(duckdb.ConstraintException):
        con.execute("INSERT INTO feature_stats SELECT * FROM incoming")


def test_sql_file_applies_with_the_whole_schema():
    from selfexplain.warehouse import Warehouse

    with Warehouse(":memory:") as warehouse:
        assert "feature_stats" in warehouse.tables()
        assert warehouse.primary_key("feature_stats") == ["release", "sae_id", "feature"]
        warehouse.apply_schema()  # a second open applies every file again


def write_sae_with_stats(tmp_path, tokenizer) -> Path:
    from tests.conftest import write_sae_folder

    folder = write_sae_folder(tmp_path / "sae", 32, 4)
    frame = feature_stats(*planted(tokenizer), d_sae=4, n_tokens=14, decode=decode_with(tokenizer))
    write_feature_stats(frame, folder)
    return folder


def test_show_prints_statistics(tmp_path, tokenizer, capsys):
    folder = write_sae_with_stats(tmp_path, tokenizer)
    assert cli_main(["show", "--sae", str(folder), "--feature", "2"]) == 0
    out = capsys.readouterr().out
    assert "feature 2" in out and "single-token" in out and "«x»bxdx" in out
    assert "density" in out and "42.86%" in out


def test_show_errors(tmp_path, tokenizer, capsys):
    folder = write_sae_with_stats(tmp_path, tokenizer)
    assert cli_main(["show", "--sae", str(folder), "--feature", "9"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert cli_main(["show", "--sae", str(tmp_path / "nope"), "--feature", "1"]) == 2
    assert "error:" in capsys.readouterr().err


def test_show_out_of_range_answers_without_importing_sae_lens():
    """The width comes from the SAE's cfg.json: the user waits for no sae-lens import (5 s)."""
    import subprocess
    import sys

    code = ("import sys; from cli.cli import main; rc = main(['show', '--sae', 'default', "
            "'--feature', '999999']); print(rc, 'sae_lens' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
    assert "feature 999999 is out of range: this SAE has features 0..4095" in done.stderr


def test_show_label_from_warehouse(tmp_path, tokenizer, capsys):
    folder = write_sae_with_stats(tmp_path, tokenizer)
    path = tmp_path / "w.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t (x INT)")
    con.close()
    # a DuckDB file that is not a selfexplain warehouse is refused with one clear line
    assert cli_main(["show", "--sae", str(folder), "--feature", "2", "--warehouse", str(path)]) == 2
    assert "not a selfexplain warehouse" in capsys.readouterr().err
    path.unlink()
    from selfexplain.warehouse import Warehouse

    Warehouse(str(path)).close()  # a real, empty warehouse
    assert cli_main(["show", "--sae", str(folder), "--feature", "2", "--warehouse", str(path)]) == 0
    assert "no label yet" in capsys.readouterr().out
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE OR REPLACE VIEW v_feature_labels AS SELECT * FROM (VALUES "
        "('local:sae', 'sae', 2, 'the letter x', 'x', 40.0, 0.7, 0.2, false, TIMESTAMP '2024-01-01'),"
        "('local:sae', 'sae', 3, 'other', NULL, 1.0, 0.1, 0.0, true, TIMESTAMP '2024-01-01')) "
        "AS t(release, sae_id, feature, label, recovered_token, scale, composite, max_selfsim, "
        "failed, labelled_at)"
    )
    con.close()
    assert cli_main(["show", "--sae", str(folder), "--feature", "2", "--warehouse", str(path)]) == 0
    out = capsys.readouterr().out
    assert "the letter x" in out and "recovered token" in out


def test_shipped_default_sae_and_statistics():
    """The embedded default: a sae-lens TopK folder for block 2, under 40 MB in all with what
    `collect` made for it (stats, token alignment, typical inputs, held-out examples)."""
    from selfexplain.saes import DEFAULT_SAE_DIR
    from selfexplain.statstore import load_sae

    cfg = json.loads((DEFAULT_SAE_DIR / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 8 and cfg["d_sae"] == 4096
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_pre"
    assert cfg["metadata"]["sae_lens_version"]
    assert (DEFAULT_SAE_DIR / "sae_weights.safetensors").stat().st_size < 20 * 2**20
    assert (DEFAULT_SAE_DIR / "CARD.md").is_file()
    stats = load_feature_stats(DEFAULT_SAE_DIR)
    from selfexplain.collect import CONTEXT_WINDOWS

    assert stats.schema == pl.Schema({**SCHEMA, "top_context_windows": CONTEXT_WINDOWS})
    assert stats["feature"].to_list() == list(range(4096))
    manifest = json.loads((DEFAULT_SAE_DIR / "manifest.json").read_text())
    assert manifest["train_tokens"] >= 1_000_000 and manifest["heldout_tokens"] >= 250_000
    # TopK: exactly k latents per token unless a pre-activation is <= 0, so the densities add up
    # to the mean L0, a little under k
    assert 0.95 * cfg["k"] < stats["density"].sum() <= cfg["k"]
    live = stats.filter(stats["density"] > 0)
    assert all(0 < len(c) <= 20 for c in live["top_contexts"].to_list())
    assert all("«" in c[0]["text"] and "»" in c[0]["text"] for c in live["top_contexts"].to_list())
    assert all(len(v) == 10 for v in stats["vocabproj_tokens"].to_list())
    assert sum(p.stat().st_size for p in DEFAULT_SAE_DIR.iterdir()) < 40 * 2**20
    aligned = stats.filter(pl.col("single_token"))["token_alignment"]
    assert aligned.null_count() < 0.1 * len(aligned)  # tokens that are only whitespace have none
    assert stats.filter(~pl.col("single_token"))["token_alignment"].null_count() == stats.filter(
        ~pl.col("single_token")).height
    inputs = load_sae("default").inputs
    assert inputs is not None and inputs.shape == (4096, 576)
    assert ((inputs.norm(dim=-1) > 0) == torch.tensor((stats["density"] > 0).to_list())).all()
