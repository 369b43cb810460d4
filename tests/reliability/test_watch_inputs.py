"""watch_saes on a registry or inbox SAE with malformed fields: the flow fails with one line naming
the entry and what to do, and records nothing (skipping the entry would record its SAEs as
removed). A folder still being copied is left for a later tick."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from rel_common import all_rows, assert_same_rows
from selfexplain.errors import InputError
from tests.conftest import write_sae_folder

GOOD = {"rel-a": {"model": "gpt2", "repo_id": "org/repo",
                  "saes": [{"id": "a0", "path": "a0/params", "neuronpedia": "gpt2-small/a0"},
                           {"id": "a1", "path": 0}]}}  # sae-lens's own registry has numeric paths


def bad_registry(case: str) -> str:
    data = json.loads(json.dumps(GOOD))
    entry = data["rel-a"]
    if case == "not YAML":
        return "rel-a: [unclosed\n  saes: {"
    if case == "empty":
        return ""
    if case == "a list":
        return yaml.safe_dump([GOOD])
    if case == "release without saes":
        del entry["saes"]
    elif case == "saes not a list":
        entry["saes"] = {"id": "a0"}
    elif case == "SAE not a mapping":
        entry["saes"][1] = "a1"
    elif case == "SAE without id":
        del entry["saes"][1]["id"]
    elif case == "model a list":
        entry["model"] = ["gpt2"]
    elif case == "neuronpedia a mapping":
        entry["saes"][0]["neuronpedia"] = {"id": "x"}
    return yaml.safe_dump(data)


REGISTRY_CASES = [
    ("missing file", r"cannot read registry .*registry\.yaml: No such file", r"give an existing"),
    ("not YAML", r"registry .* is not valid YAML", r"fix the file"),
    ("empty", r"is empty or not a mapping of releases", r"pretrained_saes\.yaml format"),
    ("a list", r"is empty or not a mapping of releases", r"pretrained_saes\.yaml format"),
    ("release without saes", r"release 'rel-a': expected a mapping with a `saes` list",
     r"fix that entry"),
    ("saes not a list", r"release 'rel-a': expected a mapping with a `saes` list", r"fix that"),
    ("SAE not a mapping", r"release 'rel-a', SAE #1: expected a mapping with an `id`", r"fix"),
    ("SAE without id", r"release 'rel-a', SAE #1: field 'id' is 'None', expected text", r"fix"),
    ("model a list", r"field 'model' is \"\['gpt2'\]\", expected text", r"fix that entry"),
    ("neuronpedia a mapping", r"SAE #0: field 'neuronpedia' is .*, expected text", r"fix"),
]


@pytest.fixture(scope="module")
def seen_once(prefect_server, tmp_path_factory):
    """A warehouse that has seen the good registry once (its baseline)."""
    from flows.watch_saes import watch_saes

    root = tmp_path_factory.mktemp("watched")
    warehouse, inbox, reg = root / "w.duckdb", root / "inbox", root / "registry.yaml"
    inbox.mkdir()
    reg.write_text(yaml.safe_dump(GOOD))
    assert watch_saes(str(warehouse), str(inbox), str(reg), start="none")["baseline"] == ["registry"]
    return warehouse


@pytest.fixture
def watched(seen_once, tmp_path):
    """A copy of that warehouse, an empty inbox and the good registry."""
    warehouse, inbox, reg = tmp_path / "w.duckdb", tmp_path / "inbox", tmp_path / "registry.yaml"
    shutil.copyfile(seen_once, warehouse)
    inbox.mkdir()
    reg.write_text(yaml.safe_dump(GOOD))
    return warehouse, inbox, reg


def one_line(info, problem: str, remedy: str | None = None) -> str:
    import re

    message = str(info.value)
    assert "\n" not in message and re.search(problem, message), message
    assert remedy is None or re.search(remedy, message), message
    return message


@pytest.mark.parametrize("case, problem, remedy", REGISTRY_CASES, ids=[c[0] for c in REGISTRY_CASES])
def test_malformed_registry_is_one_line_naming_the_entry(case, problem, remedy, tmp_path):
    from tasks.watch import read_registry

    reg = tmp_path / "registry.yaml"
    if case != "missing file":
        reg.write_text(bad_registry(case))
    with pytest.raises(InputError) as info:
        read_registry.fn(str(reg))
    one_line(info, problem, remedy)


INBOX_CASES = [
    ("metadata", ["not", "a", "dict"], r"expected an object with a `metadata` object"),
    ("d_sae", "sixteen", r"d_sae is 'sixteen', expected a positive integer"),
    ("d_sae", -3, r"d_sae is -3, expected a positive integer"),
    ("hook_name", {"layer": 1}, r"field 'hook_name' is .*, expected text"),
]


def drop_malformed(inbox, field, value, d_model: int):
    folder = write_sae_folder(inbox / "dropped", d_model, 16)
    cfg = json.loads((folder / "cfg.json").read_text())
    if field == "hook_name":
        cfg["metadata"]["hook_name"] = value
    else:
        cfg[field] = value
    (folder / "cfg.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("field, value, problem", INBOX_CASES)
def test_malformed_inbox_sae_is_one_line_naming_the_folder(field, value, problem, tmp_path,
                                                           tiny_lm):
    from tasks.watch import scan_inbox

    drop_malformed(tmp_path, field, value, tiny_lm.d_model)
    with pytest.raises(InputError) as info:
        scan_inbox.fn(str(tmp_path))
    one_line(info, problem + ".*fix or remove the folder")
    assert "dropped" in str(info.value)


@pytest.mark.parametrize("source", ["registry", "inbox"])
def test_the_watch_stops_and_records_nothing(source, watched, tiny_lm):
    from flows.watch_saes import watch_saes

    warehouse, inbox, reg = watched
    before = all_rows(warehouse)
    if source == "registry":
        reg.write_text(bad_registry("SAE without id"))
    else:
        drop_malformed(inbox, "d_sae", "sixteen", tiny_lm.d_model)
    with pytest.raises(InputError) as info:
        watch_saes(str(warehouse), str(inbox), str(reg), start="none")
    one_line(info, "SAE #1: field 'id'" if source == "registry" else "d_sae is 'sixteen'")
    assert_same_rows(all_rows(warehouse), before)


def test_half_copied_inbox_sae_waits_for_a_later_tick(watched, tiny_sae_dir):
    from flows.watch_saes import watch_saes

    warehouse, inbox, reg = watched
    (inbox / "copying").mkdir()
    (inbox / "copying" / "cfg.json").write_text('{"d_in": 32, "d_s')  # still being written
    assert watch_saes(str(warehouse), str(inbox), str(reg), start="none")["added"] == []
    shutil.rmtree(inbox / "copying")
    shutil.copytree(tiny_sae_dir, inbox / "copying")  # complete now
    added = watch_saes(str(warehouse), str(inbox), str(reg), start="none")["added"]
    assert added == [str((inbox / "copying").resolve())]
