"""The feature browser through FastAPI's test client on a real warehouse: pages and JSON agree
with the warehouse, search/filter/sort/paging work, a model-written label is shown as text, and
unknown SAEs, features or parameters get a clear 404/400."""

from __future__ import annotations

import duckdb
import pytest
from fastapi.testclient import TestClient

from selfexplain.browse.app import create_app
from tests.browse.conftest import ATTACK, N_FEATURES, RELEASE, SAE_ID

TABLE = {"release": RELEASE, "sae_id": SAE_ID}


@pytest.fixture(scope="module")
def client(browse_warehouse) -> TestClient:
    return TestClient(create_app(browse_warehouse))


def features(client, **params) -> dict:
    response = client.get("/api/features", params={**TABLE, **params})
    assert response.status_code == 200, response.text
    return response.json()


def test_sae_page_and_api(client):
    (row,) = client.get("/api/saes").json()
    assert (row["release"], row["sae_id"], row["n_labelled"], row["n_failed"]) == (
        RELEASE, SAE_ID, N_FEATURES, row["n_failed"])
    html = client.get("/").text
    assert SAE_ID in html and "/features?release=local%3Atiny_sae&amp;sae_id=tiny_sae" in html


def test_search_filter_sort_and_pages(client, browse_warehouse):
    assert features(client)["total"] == N_FEATURES
    found = features(client, q="CAT")  # case-insensitive; feature 2's label also has "cats"
    assert {r["feature"] for r in found["rows"]} == {1, 2}
    flagged = features(client, flagged="yes")["rows"]
    with duckdb.connect(str(browse_warehouse), read_only=True) as con:
        expected = {f for (f,) in con.sql("SELECT feature FROM v_feature_labels WHERE failed")
                    .fetchall()}
    assert {r["feature"] for r in flagged} == expected and 1 in expected
    dense = features(client, density_min=0.004)["rows"]
    assert {r["feature"] for r in dense} == {3, 4, 5}
    desc = features(client, sort="density", desc=True)["rows"]
    assert [r["feature"] for r in desc] == list(range(N_FEATURES))[::-1]
    page2 = features(client, size=4, page=2)
    assert page2["pages"] == 2 and [r["feature"] for r in page2["rows"]] == [4, 5]
    html = client.get("/features", params={**TABLE, "size": 4}).text
    assert 'id="next"' in html and "page=2" in html and html.count('class="feature-row"') == 4


def test_held_out_detection_sorts_filters_and_shows(client):
    best = features(client, sort="detection", desc=True)["rows"]
    assert [r["feature"] for r in best] == [3, 2, 1, 0, 4, 5]  # unscored ones last
    assert best[0]["detection_auroc"] == pytest.approx(0.85)
    assert best[0]["detection_auroc_hard"] == pytest.approx(0.65)
    good = features(client, det_min=0.7)["rows"]
    assert {r["feature"] for r in good} == {2, 3}
    assert client.get("/api/features", params={**TABLE, "det_min": 2}).status_code in (400, 422)
    page = client.get("/feature", params={**TABLE, "feature": 3}).text
    assert "0.85 vs random text, 0.65 vs its nearest latents" in page
    assert "not scored" in client.get("/feature", params={**TABLE, "feature": 5}).text


def test_feature_page_shows_everything(client):
    data = client.get("/api/feature", params={**TABLE, "feature": 2}).json()
    assert data["label"]["label"] == "dogs and cats"
    assert {c["prompt"] for c in data["candidates"]} == {"meaning", "repeat"}
    assert any(c["chosen"] for c in data["candidates"])
    assert [h["run_id"] for h in data["history"]] == ["run-new", "run-old"]
    assert data["contexts"][0]["token"] == "cat" and data["contexts"][1]["shade"] == 0.5
    html = client.get("/feature", params={**TABLE, "feature": 2}).text
    assert "<svg" in html and "meaning prompt" in html  # the sweep, drawn by matplotlib
    assert 'rgba(255, 120, 0, 0.5)">dog</span>' in html  # firing token shaded by activation
    assert "a &lt;b&gt;" in html  # context text is escaped too
    assert "decoder/token cosine 0.70" in html


def test_a_carried_label_says_where_it_comes_from(client):
    html = client.get("/feature", params={**TABLE, "feature": 3}).text
    assert 'id="provisional"' in html and "local:old/old feature 9" in html
    assert "decoder cosine 0.950" in html
    assert 'id="provisional"' not in client.get("/feature", params={**TABLE, "feature": 2}).text


def test_model_written_label_is_text_not_markup(client):
    for path in ("/feature", "/features"):
        params = {**TABLE, "feature": 0} if path == "/feature" else TABLE
        html = client.get(path, params=params).text
        assert ATTACK not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert client.get("/api/feature", params={**TABLE, "feature": 0}).json()[
        "label"]["label"] == ATTACK


@pytest.mark.parametrize("path, params, status, message", [
    ("/features", {"release": "nope", "sae_id": "x"}, 404, "no labelled SAE nope/x"),
    ("/feature", {**TABLE, "feature": 999}, 404, "feature 999 of local:tiny_sae/tiny_sae has no label"),
    ("/feature", {**TABLE, "feature": "abc"}, 400, "bad parameter feature"),
    ("/features", {**TABLE, "sort": "label; DROP TABLE label"}, 400, "bad parameter sort"),
    ("/features", {**TABLE, "page": 0}, 400, "bad parameter page"),
    ("/no-such-page", {}, 404, "no-such-page"),
])
def test_bad_requests_get_a_clear_page(client, path, params, status, message):
    html = client.get(path, params=params)
    assert html.status_code == status and message in html.text
    api = client.get("/api" + path, params=params)
    assert api.status_code == status and message in api.json()["error"]


def test_evaluation_page(client):
    rows = client.get("/api/evaluation").json()
    assert [(r["metric"], r["n"], r["mean"]) for r in rows] == [("hit_top3", 4, 0.5)]
    assert "hit_top3" in client.get("/evaluation").text


def test_sql_injection_in_search_is_just_text(client):
    assert features(client, q="' OR 1=1 --")["total"] == 0
    assert features(client, q="%")["total"] == 0  # LIKE wildcards are literal


def test_pages_read_the_snapshot_while_a_run_writes(browse_warehouse, tmp_path):
    import shutil

    from selfexplain.warehouse import Warehouse
    from tests.sql.conftest import held_by_another_process

    path = tmp_path / "w.duckdb"
    shutil.copyfile(browse_warehouse, path)
    with Warehouse(path) as wh:
        wh.publish_snapshot()
    client = TestClient(create_app(path))
    with held_by_another_process(path):  # a writer holds the live file
        html = client.get("/features", params=TABLE)
        assert html.status_code == 200 and "reading the snapshot published at" in html.text
        assert html.text.count('class="feature-row"') == N_FEATURES
