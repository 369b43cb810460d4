"""Bad input through the CLI: each ends in one `error:` line that names the problem and what to do,
exit status 2, and the warehouse as it was (its rows; for a damaged file, its bytes)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
from pathlib import Path

import duckdb
import pytest
import torch

from rel_common import (D_MODEL, D_SAE, all_rows, assert_same_rows, one_error_line, relabel_args,
                        sha256, write_raw_sae)
from cli.cli import main
from tests.conftest import write_sae_folder


@pytest.fixture(scope="session")
def filled(clean) -> Path:
    """A warehouse holding one real run; tests work on copies of it."""
    return clean


@pytest.fixture
def warehouse(filled, tmp_path) -> Path:
    path = tmp_path / "w.duckdb"
    shutil.copyfile(filled, path)
    return path


@pytest.fixture(scope="module")
def bad(model_dir, sae_file, tmp_path_factory) -> dict[str, str]:
    """Broken models, SAEs and files, built once."""
    root = tmp_path_factory.mktemp("bad")
    out: dict[str, str] = {"root": str(root)}
    generator = torch.Generator().manual_seed(1)
    out["narrow"] = str(write_raw_sae(root / "narrow.safetensors",
                                      torch.randn(D_SAE, 24, generator=generator)))
    out["deep"] = str(write_sae_folder(root / "deep_sae", D_MODEL, D_SAE,
                                       hook_name="blocks.20.hook_resid_post"))
    weights = Path(sae_file).read_bytes()
    (root / "truncated.safetensors").write_bytes(weights[: len(weights) // 2])
    out["raw_truncated"] = str(root / "truncated.safetensors")
    write_raw_sae(root / "empty.safetensors", torch.zeros(0, D_MODEL))
    out["raw_empty"] = str(root / "empty.safetensors")

    folder = write_sae_folder(root / "sae_truncated", D_MODEL, D_SAE)
    data = (folder / "sae_weights.safetensors").read_bytes()
    (folder / "sae_weights.safetensors").write_bytes(data[:100])
    out["folder_truncated"] = str(folder)
    folder = write_sae_folder(root / "cfg_not_json", D_MODEL, D_SAE)
    (folder / "cfg.json").write_text('{"d_in": 32, "d_sae"')
    out["cfg_not_json"] = str(folder)
    folder = write_sae_folder(root / "cfg_bad_field", D_MODEL, D_SAE)
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "d_in": "wide"}))
    out["cfg_bad_field"] = str(folder)
    folder = write_sae_folder(root / "cfg_mismatch", D_MODEL, D_SAE)
    (folder / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 64}))
    out["cfg_mismatch"] = str(folder)

    for name, damage in {
        "model_truncated": lambda m: (m / "model.safetensors").write_bytes(
            (m / "model.safetensors").read_bytes()[:5000]),
        "model_config": lambda m: (m / "config.json").write_text("{not json"),
        "model_tokenizer": lambda m: (m / "tokenizer.json").write_text('{"version": '),
    }.items():
        target = root / name
        shutil.copytree(model_dir, target)
        damage(target)
        out[name] = str(target)
    (root / "corrupt.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(300))
    out["gguf_corrupt"] = str(root / "corrupt.gguf")
    (root / "empty.gguf").write_bytes(b"")
    out["gguf_empty"] = str(root / "empty.gguf")
    return out


def relabel(model_dir, sae_file, warehouse, *flags, features="0-3", model=None, sae=None):
    return relabel_args(model or model_dir, sae or sae_file, warehouse, features, 4, *flags)


OWNED = None
"""No remedy asserted: the message comes from config.py / explain.py (another developer's files;
their missing 'what to do' is reported in issue 8's closing note)."""

# id, extra flags / overrides, what the line must say (problem), and what to do (remedy)
CASES = [
    ("unknown model folder", dict(model="{root}/no-such-model"),
     r"model folder .*no-such-model does not exist", r"give a transformers folder"),
    ("unknown model id", dict(model="nobody/no-such-model"),
     r"cannot load model 'nobody/no-such-model'", r"give a local folder or a \.gguf file"),
    ("unknown release", dict(sae="gemma-2b-res-jbb/blocks.6.hook_resid_post"),
     r"unknown SAE release 'gemma-2b-res-jbb'", r"did you mean gemma-2b-res-jb"),
    ("unknown SAE id", dict(sae="gemma-2b-res-jb/blocks.66.hook_resid_post"),
     r"release 'gemma-2b-res-jb' has no SAE id 'blocks.66", r"did you mean blocks\.6\.hook"),
    ("unknown SAE spec", dict(sae="no-such-sae"),
     r"SAE 'no-such-sae' is neither", r"a folder, a \.safetensors file, nor RELEASE/SAE_ID"),
    ("SAE width mismatch", dict(sae="{narrow}"),
     r"has width 24 but the model's residual stream is 32", r"pick the SAE trained on this model"),
    ("SAE hook beyond the model", dict(sae="{deep}"),
     r"hooks blocks\.20\.hook_resid_post, beyond the model's 6 blocks", r"pick the SAE"),
    ("injection layer beyond the model", dict(flags=["--injection-layer", "9"]),
     r"injection layer 9 is beyond the model's 6 blocks", OWNED),
    ("probe before injection", dict(flags=["--injection-layer", "3", "--probe-layer", "2"]),
     r"probe layer 2 must come after injection layer 3", OWNED),
    ("empty feature list", dict(features=" , "), r"feature list is empty", r"give e\.g\."),
    ("reversed features", dict(features="9-2"), r"'9-2' is reversed", r"write 2-9"),
    ("features out of range", dict(features="10-20"),
     r"feature index 16 is out of range", r"this SAE has features 0\.\.15"),
    ("duplicated feature", dict(features="1,1"), r"names feature 1 twice", r"give each feature once"),
    ("overlapping ranges", dict(features="0-3,2-5"), r"names feature 2 twice", r"give each"),
    ("feature not a number", dict(features="a-b"), r"'a-b' is not an index", r"range like 0-7"),
    ("empty scale grid", dict(flags=["--scales", ""]), r"is empty", r"give at least one scale"),
    ("scale grid not numbers", dict(flags=["--scales", "low,high"]),
     r"scale grid 'low,high' is not a list", r"like 0,10,20"),
    ("scale grid decreasing", dict(flags=["--scales", "3,1"]),
     r"not strictly increasing", r"sort it and drop repeats"),
    ("scale grid repeats", dict(flags=["--scales", "0,1,1"]), r"not strictly increasing", r"sort"),
    ("negative scale", dict(flags=["--scales=-1,1"]), r"negative scale", r"use >= 0"),
    ("NaN scale", dict(flags=["--scales", "0,nan"]), r"NaN or infinity", OWNED),
    ("infinite scale", dict(flags=["--scales", "0,inf"]), r"NaN or infinity", OWNED),
    ("zero-count range", dict(flags=["--scales", "0:1:0"]), r"count must be between 1 and 10000",
     OWNED),
    ("one scale", dict(flags=["--scales", "1"]), r"at least 2 scales", OWNED),
    ("zero samples", dict(flags=["--samples", "0"]), r"invalid samples", r"greater than or equal"),
    ("zero shard size", dict(flags=["--shard-size", "0"]), r"invalid shard_size",
     r"greater than or equal"),
    ("multi-token placeholder", dict(flags=["--placeholder", "Xyz"]),
     r"placeholder 'Xyz' is not a single token", r"choose another placeholder"),
    ("truncated SAE folder weights", dict(sae="{folder_truncated}"),
     r"cannot load SAE folder .*sae_truncated.*SafetensorError", r"copy or export the SAE again"),
    ("truncated safetensors file", dict(sae="{raw_truncated}"),
     r"cannot read .*truncated\.safetensors", r"corrupt or truncated: copy or export it again"),
    ("SAE without features", dict(sae="{raw_empty}"), r"has an empty decoder \(0, 32\)",
     r"check the file"),
    ("cfg.json not JSON", dict(sae="{cfg_not_json}"), r"cfg\.json is not valid JSON",
     r"the folder is corrupt"),
    ("cfg.json field of the wrong type", dict(sae="{cfg_bad_field}"),
     r"cannot load SAE folder .*cfg_bad_field", r"copy or export the SAE again"),
    ("cfg.json not matching the weights", dict(sae="{cfg_mismatch}"),
     r"cannot load SAE folder .*cfg_mismatch", r"do not match"),
    ("truncated model weights", dict(model="{model_truncated}"),
     r"cannot load model .*model_truncated.*SafetensorError", r"copy or download the model again"),
    ("corrupt model config.json", dict(model="{model_config}"),
     r"config\.json' is not a valid JSON file", r"give a local folder"),
    ("corrupt tokenizer.json", dict(model="{model_tokenizer}"),
     r"cannot load model .*model_tokenizer", r"copy or download the model again"),
    ("no layer threshold drawn yet", dict(flags=["--layer-threshold"]),
     r"no failure threshold stored for .* at layer \d+ with these settings",
     r"run `selfexplain evaluate --suite real .* --null 100"),
    ("fixed and layer threshold together", dict(flags=["--layer-threshold",
                                                     "--failure-threshold", "0.2"]),
     r"--failure-threshold or --layer-threshold", r"not both"),
    ("corrupt GGUF", dict(model="{gguf_corrupt}"), r"cannot read GGUF file .*corrupt\.gguf",
     r"download it again"),
    ("truncated (empty) GGUF", dict(model="{gguf_empty}"), r"cannot read GGUF file .*empty\.gguf",
     r"download it again"),
]


@pytest.mark.parametrize("name, spec, problem, remedy", CASES, ids=[c[0] for c in CASES])
def test_relabel_bad_input(name, spec, problem, remedy, bad, model_dir, sae_file, warehouse,
                           capsys):
    before = all_rows(warehouse)
    fill = {k: v.format(**bad) for k, v in spec.items() if isinstance(v, str)}
    argv = relabel(model_dir, sae_file, warehouse, *spec.get("flags", []), **fill)
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert re.search(problem, line), line
    assert remedy is OWNED or re.search(remedy, line), line
    assert_same_rows(all_rows(warehouse), before)


# -- damaged or foreign warehouse files: refused, their bytes untouched ----------------------------
def damaged(kind: str, filled: Path, path: Path) -> Path:
    if kind == "random bytes":
        path.write_bytes(os.urandom(20_000))
    elif kind == "truncated":
        path.write_bytes(filled.read_bytes()[:100_000])
    elif kind == "foreign DuckDB":
        con = duckdb.connect(str(path))
        con.execute("CREATE TABLE customers (id INTEGER, name VARCHAR)")
        con.execute("INSERT INTO customers VALUES (1, 'ada')")
        con.close()
    elif kind == "SQLite file":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE a (x)")
        con.commit()
        con.close()
    elif kind == "text file":
        path.write_text("label,feature\ncats,1\n")
    return path


WAREHOUSES = [
    ("random bytes", r"is not a selfexplain warehouse \(not a DuckDB file\)",
     r"pass another --warehouse path"),
    ("truncated", r"cannot open warehouse .*Could not read", r"restore a backup"),
    ("foreign DuckDB", r"holds 1 tables but no schema_version: it is not a selfexplain warehouse",
     r"pass another --warehouse path"),
    ("SQLite file", r"is not a selfexplain warehouse \(an SQLite database\)", r"pass another"),
    ("text file", r"is not a selfexplain warehouse \(not a DuckDB file\)", r"restore a backup"),
]


@pytest.mark.parametrize("kind, problem, remedy", WAREHOUSES, ids=[w[0] for w in WAREHOUSES])
@pytest.mark.parametrize("command", ["relabel", "sql", "export", "import"])
def test_damaged_or_foreign_warehouse(kind, problem, remedy, command, filled, model_dir, sae_file,
                                      tmp_path, capsys):
    path = damaged(kind, filled, tmp_path / "w.duckdb")
    before = sha256(path)
    reference = tmp_path / "ref.jsonl"
    reference.write_text('{"index": 0, "description": "cats"}\n')
    argv = {
        "relabel": relabel(model_dir, sae_file, path),
        "sql": ["sql", "SELECT count(*) FROM v_feature_labels", "--warehouse", str(path)],
        "export": ["export", "--out", str(tmp_path / "x.jsonl"), "--warehouse", str(path)],
        "import": ["import", "--reference", str(reference), "--release", "r", "--sae-id", "s",
                   "--warehouse", str(path)],
    }[command]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    if command in ("sql", "export") and kind == "foreign DuckDB":  # opened read-only
        problem = r"is not a selfexplain warehouse \(no schema_version table\)"
    assert re.search(problem, line), line
    assert re.search(remedy, line), line
    assert sha256(path) == before
    assert not (tmp_path / "x.jsonl").exists()


def test_a_directory_as_warehouse(model_dir, sae_file, tmp_path, capsys):
    path = tmp_path / "w.duckdb"
    path.mkdir()
    assert main(relabel(model_dir, sae_file, path)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "cannot open warehouse" in line and "Is a directory" in line
    assert list(path.iterdir()) == []


# -- decoder rows without a direction: skipped with a reason, the others labelled ------------------
def test_nan_inf_and_zero_decoder_rows_are_skipped_with_a_reason(prefect_server, model_dir,
                                                                  tmp_path, capsys):
    decoder = torch.randn(D_SAE, D_MODEL, generator=torch.Generator().manual_seed(3))
    decoder[1, 5] = float("nan")
    decoder[2, 0] = float("inf")
    decoder[3] = 0.0
    sae = write_raw_sae(tmp_path / "holes.safetensors", decoder)
    warehouse = tmp_path / "w.duckdb"
    assert main(relabel_args(model_dir, str(sae), warehouse, "0-4", 5)) == 0
    out = capsys.readouterr().out
    assert "skipped feature 1: decoder row contains NaN or infinity" in out
    assert "skipped feature 2: decoder row contains NaN or infinity" in out
    assert "skipped feature 3: decoder row is zero" in out
    rows = all_rows(warehouse)
    from selfexplain.warehouse import Warehouse

    with Warehouse(warehouse, read_only=True) as wh:
        failures = wh.query("SELECT feature, kind, failure_reason FROM v_failures "
                            "WHERE kind = 'skipped' ORDER BY feature").rows()
        labelled = wh.query("SELECT feature FROM v_feature_labels WHERE NOT skipped "
                            "ORDER BY feature")["feature"].to_list()
    assert failures == [(1, "skipped", "decoder row contains NaN or infinity"),
                        (2, "skipped", "decoder row contains NaN or infinity"),
                        (3, "skipped", "decoder row is zero")]
    assert labelled == [0, 4]
    # A rerun does not retry them: they are stored as skipped.
    assert main(relabel_args(model_dir, str(sae), warehouse, "0-4", 5)) == 0
    assert "0 shards run, 1 already stored" in capsys.readouterr().out
    assert all_rows(warehouse)["label"].equals(rows["label"])


# -- SQL that writes -------------------------------------------------------------------------------
WRITES = [
    "DELETE FROM label", "UPDATE label SET label = 'x'", "INSERT INTO label SELECT * FROM label",
    "DROP VIEW v_feature_labels", "CREATE TABLE t AS SELECT 1", "ALTER TABLE label ADD z INT",
    "COPY label TO '{out}'", "EXPORT DATABASE '{dir}'", "ATTACH '{dir}/x.duckdb' AS x",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO '{out}'", "EXPLAIN (ANALYZE) COPY label TO '{out}'",
    "INSTALL httpfs", "LOAD httpfs", "SET threads = 1", "PRAGMA enable_profiling",
    "CHECKPOINT", "VACUUM", "SELECT 1; DROP TABLE label", "BEGIN TRANSACTION",
]


@pytest.mark.parametrize("query", WRITES)
def test_sql_refuses_writes(query, warehouse, tmp_path, capsys):
    before = all_rows(warehouse)
    out, folder = tmp_path / "out.csv", tmp_path / "exported"
    assert main(["sql", query.format(out=out, dir=folder), "--warehouse", str(warehouse)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert ("is read-only" in line and "statements are refused" in line
            or "give exactly one statement" in line), line
    assert not out.exists() and not folder.exists()
    assert_same_rows(all_rows(warehouse), before)


def test_sql_reads_are_allowed(warehouse, capsys):
    for query in ["SELECT count(*) AS n FROM v_feature_labels", "EXPLAIN SELECT * FROM label",
                  "EXPLAIN ANALYZE SELECT 1", "DESCRIBE label", "SUMMARIZE label"]:
        assert main(["sql", query, "--warehouse", str(warehouse)]) == 0, query
    capsys.readouterr()


# -- reference-label imports and backups -----------------------------------------------------------
REFERENCES = [
    ("not JSON", "{index: 1}", r"line 2 is not JSON", r"one JSON object per line"),
    ("a list", "[1, 2]", r"line 2 is a JSON list", r"object with index and description"),
    ("no description", '{"index": 1}', r"lacks field\(s\) \['description'\]", r"each line needs"),
    ("index a word", '{"index": "one", "description": "x"}', r"index 'one' is not a feature number",
     r"\(0, 1, 2, \.\.\.\)"),
    ("negative index", '{"index": -4, "description": "x"}', r"index '-4' is not a feature",
     r"0, 1, 2"),
    ("description an object", '{"index": 1, "description": {"a": 1}}',
     r"description is a JSON dict, not text", r"give it as a string"),
    ("empty file", "", r"holds no labels", r"each line needs an index and a description"),
]


@pytest.mark.parametrize("name, text, problem, remedy", REFERENCES, ids=[r[0] for r in REFERENCES])
def test_reference_import_bad_lines(name, text, problem, remedy, warehouse, tmp_path, capsys):
    before = all_rows(warehouse)
    src = tmp_path / "ref.jsonl"
    src.write_text('{"index": 0, "description": "cats"}\n' + text + "\n" if text else "")
    assert main(["import", "--reference", str(src), "--release", "r", "--sae-id", "s",
                 "--warehouse", str(warehouse)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert re.search(problem, line) and re.search(remedy, line), line
    assert_same_rows(all_rows(warehouse), before)


@pytest.mark.parametrize("damage, problem", [
    ("no manifest", r"has no manifest\.json: not a `selfexplain export --backup`"),
    ("manifest not JSON", r"manifest\.json is damaged .*make the backup again"),
    ("table file missing", r"backup file .*label\.parquet is missing or damaged"),
    ("table file truncated", r"backup file .*label\.parquet is missing or damaged"),
])
def test_restore_from_a_damaged_backup(damage, problem, warehouse, filled, tmp_path, capsys):
    backup = tmp_path / "backup"
    assert main(["export", "--backup", str(backup), "--warehouse", str(filled)]) == 0
    if damage == "no manifest":
        (backup / "manifest.json").unlink()
    elif damage == "manifest not JSON":
        (backup / "manifest.json").write_text("{")
    elif damage == "table file missing":
        (backup / "label.parquet").unlink()
    else:
        data = (backup / "label.parquet").read_bytes()
        (backup / "label.parquet").write_bytes(data[: len(data) // 2])
    target = tmp_path / "target.duckdb"
    shutil.copyfile(warehouse, target)
    before = all_rows(target)
    capsys.readouterr()
    assert main(["import", "--backup", str(backup), "--warehouse", str(target)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert re.search(problem, line), line
    assert_same_rows(all_rows(target), before)


@pytest.mark.parametrize("flags, problem", [
    (["--workers", "0"], r"--workers 0: at least one worker"),
    (["--worker-runs", "0"], r"--worker-runs 0: at least one"),
    (["--shards-per-run", "0"], r"--shards-per-run 0: at least one"),
    (["--stale-after", "5"], r"--stale-after 5: more than 10 s"),
])
def test_scale_out_bad_flags_answer_before_anything_starts(flags, problem, warehouse, capsys):
    before = all_rows(warehouse)
    assert main(["scale-out", "--warehouse", str(warehouse), *flags]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert re.search(problem, line), line
    assert_same_rows(all_rows(warehouse), before)
