"""Task logic without orchestration (`task.fn()` under `disable_run_logger`), and the request."""

from __future__ import annotations

import pytest
from prefect.logging import disable_run_logger

from selfexplain.errors import InputError
from selfexplain.warehouse import Warehouse
from selfexplain.warehouse_rows import frame, utc_now
from tasks.request import RelabelRequest, compact, shard_key, split_shards
from tasks.watch import WatchFilter, read_registry, scan_inbox


def test_request_validates_at_the_edge():
    with pytest.raises(InputError, match="^feature range '7-3' is reversed"):
        RelabelRequest.build(features="7-3")
    with pytest.raises(InputError, match="scale"):
        RelabelRequest.build(scales="0,-1")
    with pytest.raises(InputError, match="shard_size"):
        RelabelRequest.build(shard_size=0)
    a, b = RelabelRequest.build(seed=1), RelabelRequest.build(seed=1, shard_size=3, features="0-3")
    assert a.request_hash("r", "s") == b.request_hash("r", "s")  # features/shards: not settings
    assert a.request_hash("r", "s") != RelabelRequest.build(seed=2).request_hash("r", "s")


def test_shards_and_keys():
    assert split_shards(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert shard_key([3, 4, 5]).startswith("3-5-")
    assert compact([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


def test_stored_features_reads_shard_done(tmp_path):
    from tasks.store import stored_features

    path = tmp_path / "w.duckdb"
    with Warehouse(path) as wh:
        wh.write({"shard_done": frame("shard_done", [dict(
            request_hash="q", shard_key="k", run_id="r", release="r", sae_id="s",
            features=[0, 1, 2], n_features=3, n_labelled=3, n_failed=0, n_skipped=0,
            done_at=utc_now())])})
    with disable_run_logger():
        assert stored_features.fn(str(path), "q") == [0, 1, 2]
        assert stored_features.fn(str(path), "other") == []


def test_installed_registry_and_inbox(tmp_path, tiny_sae_dir):
    import shutil

    with disable_run_logger():
        entries, version = read_registry.fn()
        assert len(entries) > 1000 and version[0].isdigit()
        assert scan_inbox.fn(str(tmp_path / "missing")) is None
        shutil.copytree(tiny_sae_dir, tmp_path / "inbox" / "one")
        (tmp_path / "inbox" / "half").mkdir()
        (tmp_path / "inbox" / "half" / "cfg.json").write_text("{not json")
        found = scan_inbox.fn(str(tmp_path / "inbox"))
    assert [(e.release, e.sae_id, e.model_id) for e in found] == [("local:one", "one", "tiny")]
    rules = WatchFilter(models={"tiny": "/models/tiny"}, releases=["local:*"])
    assert rules.model_for(found[0]) == "/models/tiny"
    assert WatchFilter().model_for(found[0]) is None


def test_an_sae_without_statistics_is_never_silently_explained_on_decoder_rows(
        tiny_sae_dir, tiny_model_dir, capsys):
    """--no-collect: one line says decoder rows are injected and why; the injected key (and so
    the request hash) is the decoder's, and becomes the typical inputs' once they exist."""
    from flows.relabel import with_statistics
    from tasks.cache import cached_sae, cached_scorer
    from tasks.sae import sae_info

    cached_sae.cache_clear()
    cached_scorer.cache_clear()
    request = RelabelRequest.build(model=tiny_model_dir, sae=str(tiny_sae_dir), collect=False)
    info = sae_info(request.sae)
    with disable_run_logger():
        kept = with_statistics(request, info)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "injecting decoder rows" in out[0] and "--no-collect" in out[0]
    assert request.injected(kept) == "decoder"
    with_inputs = info.model_copy(update={"typical_inputs": "input:abc"})
    assert request.injected(with_inputs) == "input:abc"
    assert request.request_hash("r", "s", "input:abc") != request.request_hash("r", "s")
    faithful = RelabelRequest.build(sae=str(tiny_sae_dir), preset="faithful")
    assert faithful.injected(with_inputs) == "decoder"  # the post's recipe: decoder rows always
