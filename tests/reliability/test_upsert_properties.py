"""Property: any sequence of label batches, with batches repeated and reordered, leaves the same
labels as applying each batch once (in-memory DuckDB, the real upsert files).

A batch holds the label and label_current rows of some (feature, run) facts, as shards and Parquet
merges write them; several runs of one feature may share a batch, and runs may share a timestamp
(the case that made the current label depend on the order before label_current settled ties)."""

from __future__ import annotations

import datetime as dt
import functools

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfexplain.warehouse import MEMORY, Warehouse

from selfexplain.warehouse_rows import frame

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
RUNS = ["run-a", "run-b", "run-c"]
FEATURES = range(4)


@st.composite
def histories(draw):
    """(batches, order): facts (feature, run) with a label each, grouped into batches; `order`
    applies every batch at least once, repeated and shuffled."""
    stamps = {run: T0 + dt.timedelta(seconds=draw(st.integers(0, 1))) for run in RUNS}
    facts = draw(st.lists(st.tuples(st.sampled_from(FEATURES), st.sampled_from(RUNS)),
                          min_size=1, max_size=8, unique=True))
    labels = {fact: draw(st.sampled_from(["cats", "dogs", "", "a long label", None]))
              for fact in facts}
    n = draw(st.integers(1, 4))
    batches = [draw(st.lists(st.sampled_from(facts), min_size=1, max_size=6)) for _ in range(n)]
    order = draw(st.permutations(range(n))) + draw(st.lists(st.integers(0, n - 1), max_size=4))
    order = draw(st.permutations(order))
    return [rows(batch, labels, stamps) for batch in batches], order


def rows(batch, labels, stamps) -> dict[str, pl.DataFrame]:
    keys = [dict(release="r", sae_id="s", feature=f, run_id=run, labelled_at=stamps[run])
            for f, run in batch]
    return {
        "label": frame("label", [dict(k, label=labels[(k["feature"], k["run_id"])],
                                      failed=labels[(k["feature"], k["run_id"])] is None,
                                      skipped=False)
                                 for k in keys]),
        "label_current": frame("label_current", keys),
    }


@functools.cache
def warehouse() -> Warehouse:
    """One in-memory warehouse for all examples (emptied before each history)."""
    return Warehouse(MEMORY)


def final_labels(batches, order) -> dict[str, pl.DataFrame]:
    wh = warehouse()
    wh.execute("DELETE FROM label_current")
    wh.execute("DELETE FROM label")
    for i in order:
        wh.write(batches[i])
    return {name: wh.query(f"SELECT * FROM {name}").sort(["feature", "run_id"])
            for name in ("label", "label_current", "v_feature_labels")}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_repeated_and_reordered_batches_give_the_labels_of_each_once(history):
    batches, order = history
    once = final_labels(batches, sorted(set(order)))
    again = final_labels(batches, order)
    for name in once:
        assert once[name].equals(again[name]), (name, order)
    current = once["v_feature_labels"]
    assert current["feature"].is_unique().all()
    # The current label of each feature is its newest run's (ties: the greatest run id).
    facts = pl.concat([b["label_current"] for b in batches]).unique()
    newest = (facts.sort(["labelled_at", "run_id"]).group_by("feature").last()
              .sort("feature").select("feature", "run_id"))
    assert current.select("feature", "run_id").equals(newest)


def test_one_batch_with_two_runs_of_a_feature_keeps_the_newest():
    early, late = T0, T0 + dt.timedelta(hours=1)
    batch = {"label_current": frame("label_current", [
        dict(release="r", sae_id="s", feature=0, run_id="new", labelled_at=late),
        dict(release="r", sae_id="s", feature=0, run_id="old", labelled_at=early),
    ])}
    with Warehouse(MEMORY) as wh:
        wh.write(batch)
        assert wh.query("SELECT run_id FROM label_current")["run_id"].to_list() == ["new"]
