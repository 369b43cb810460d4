"""Fuzzing the input parsers with hypothesis (bounded examples): feature lists, scale grids, vector
files, reference-label imports. Bad input raises a SelfExplainError with a one-line message, never
anything else; what is accepted satisfies the parser's contract."""

from __future__ import annotations

import csv
import io
import json
import math
import string

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from selfexplain.config import parse_scales
from selfexplain.errors import SelfExplainError
from selfexplain.saes import MAX_FEATURES, parse_features
from tasks.request import RelabelRequest, compact

FAST = settings(max_examples=300, deadline=None)
FILES = settings(max_examples=120, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


def one_line(err: SelfExplainError) -> None:
    assert str(err) and "\n" not in str(err), repr(str(err))


def parsed(parse, *args, **kwargs):
    """`parse(...)`'s value, or None when it refused the input with one clear line."""
    try:
        value = parse(*args, **kwargs)
    except SelfExplainError as err:
        one_line(err)
        event("refused")
        return None
    event("accepted")
    return value


def feature_text():
    parts = st.one_of(st.integers(0, 10**12).map(str),
                      st.tuples(st.integers(0, 40), st.integers(0, 40)).map("{0[0]}-{0[1]}".format),
                      st.text(alphabet="0123456789-, \t٣x", max_size=8))
    return st.one_of(st.lists(parts, max_size=6).map(",".join), st.text(max_size=20))


@FAST
@given(feature_text())
def test_feature_lists(text):
    features = parsed(parse_features, text)
    if features is None:
        return
    assert features == sorted(set(features)) and features and features[0] >= 0
    assert len(features) < MAX_FEATURES
    assert parse_features(compact(features)) == features  # the compact form reads back


def scale_text():
    number = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                       st.integers(-5, 300).map(str), st.sampled_from(["nan", "inf", "-0", "1e400",
                                                                        "1_0", " 2 ", ""]))
    listed = st.lists(number, max_size=6).map(",".join)
    ranged = st.tuples(number, number, st.one_of(st.integers(-3, 20000).map(str), number)).map(
        ":".join)
    return st.one_of(listed, ranged, st.text(alphabet="0123456789.,:-+eEinfa _", max_size=20),
                     st.text(max_size=12))


@FAST
@given(scale_text())
def test_scale_grids(text):
    grid = parsed(parse_scales, text)
    if grid is None:
        return
    assert grid and all(math.isfinite(s) and s >= 0 for s in grid)
    assert all(b > a for a, b in zip(grid, grid[1:]))


@settings(max_examples=150, deadline=None)
@given(feature_text(), scale_text(), st.one_of(st.none(), st.integers(-2, 3)),
       st.one_of(st.none(), st.integers(-2, 3)))
def test_relabel_requests(features, scales, samples, shard_size):
    request = parsed(RelabelRequest.build, features=features, scales=scales, samples=samples,
                     shard_size=shard_size)
    if request is None:
        return
    assert len(request.config().metric_scales) >= 2 and request.feature_list(10**9)


# -- vector files ----------------------------------------------------------------------------------
SUFFIXES = [".npy", ".pt", ".pth", ".safetensors", ".txt"]


def array_bytes(suffix: str, array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    if suffix == ".npy":
        np.save(buffer, array, allow_pickle=False)
    elif suffix in (".pt", ".pth"):
        torch.save(torch.from_numpy(np.ascontiguousarray(array)), buffer)
    else:
        from safetensors.torch import save

        return save({"v": torch.from_numpy(np.ascontiguousarray(array))})
    return buffer.getvalue()


arrays = st.tuples(
    st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.bool_]),
    st.one_of(st.sampled_from([[3], [2, 3], [1, 5], [4, 2]]),
              st.lists(st.integers(0, 4), min_size=0, max_size=3)),
    st.sampled_from(["normal", "normal", "zeros", "nan", "inf"]),
).map(lambda spec: _array(*spec))


def _array(dtype, shape, fill) -> np.ndarray:
    values = np.random.default_rng(len(shape)).normal(size=shape)
    if fill == "zeros":
        values[...] = 0
    elif values.size and fill in ("nan", "inf"):
        values.flat[0] = np.nan if fill == "nan" else np.inf
    with np.errstate(invalid="ignore", over="ignore"):
        return values.astype(dtype)


@FILES
@given(st.sampled_from(SUFFIXES), st.one_of(arrays, st.binary(max_size=300)),
       st.integers(0, 400))
def test_vector_files(tmp_path, suffix, content, cut):
    from selfexplain.vectors import load_vectors

    if isinstance(content, np.ndarray):
        content = array_bytes(suffix if suffix != ".txt" else ".npy", content)
        content = content[:cut] if cut < 40 else content  # some files truncated
    path = tmp_path / f"v{suffix}"
    path.write_bytes(content)
    vectors = parsed(load_vectors, path)
    if vectors is None:
        return
    assert vectors.ndim == 2 and vectors.shape[0] >= 1 and vectors.shape[1] >= 1
    assert vectors.dtype == torch.float32 and torch.isfinite(vectors).all()
    assert (vectors.norm(dim=-1) > 0).all()


# -- reference-label imports -----------------------------------------------------------------------
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 2**33), st.floats(allow_nan=False),
              st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6)
keys = st.sampled_from(["index", "description", "modelId", "layer", "explanationModelName",
                        "other"])
objects = st.one_of(
    st.fixed_dictionaries({"index": st.one_of(st.integers(0, 50), st.integers(0, 50).map(str)),
                           "description": st.text(min_size=1, max_size=20)},
                          optional={"modelId": st.text(max_size=8), "layer": json_values}),
    st.dictionaries(keys, json_values, max_size=5),
)
lines = st.one_of(objects.map(json.dumps), json_values.map(json.dumps),
                  st.text(alphabet=string.printable, max_size=30))


def assert_reference_rows(rows) -> None:
    assert rows.height >= 1
    assert rows["feature"].min() >= 0 and rows["description"].null_count() == 0
    assert all(isinstance(d, str) and d == d.strip() and d for d in rows["description"])
    assert rows.select("release", "sae_id", "feature").is_unique().all()  # the last one wins


@FILES
@given(st.lists(lines, max_size=6))
def test_reference_label_files(tmp_path, content):
    from selfexplain.references import read_reference_labels

    path = tmp_path / "ref.jsonl"
    path.write_text("\n".join(content))
    rows = parsed(read_reference_labels, path, source="neuronpedia", release="r", sae_id="s")
    if rows is None:
        return
    assert_reference_rows(rows)
    assert set(rows["release"]) == {"r"} and set(rows["sae_id"]) == {"s"}


@FILES
@given(st.one_of(st.lists(st.one_of(objects, json_values), max_size=5),
                 st.dictionaries(st.sampled_from(["explanations", "data", "index", "x"]),
                                 st.one_of(st.lists(objects, max_size=3), json_values),
                                 max_size=3)))
def test_reference_label_json_documents(tmp_path, document):
    """A JSON list, or an object (holding the list, or one entry): accepted rows or one line."""
    from selfexplain.references import read_reference_labels

    path = tmp_path / "ref.json"
    path.write_text(json.dumps(document, indent=1))
    rows = parsed(read_reference_labels, path)
    if rows is not None:
        assert_reference_rows(rows)


csv_cells = st.one_of(st.integers(-3, 60).map(str), st.text(alphabet=string.printable,
                                                            max_size=10))


@FILES
@given(st.sampled_from(["feature,description", "index,label", "feature,text", "description",
                        "latent,explanation,modelId", ""]),
       st.lists(st.lists(csv_cells, min_size=0, max_size=4), max_size=5))
def test_reference_label_csv_files(tmp_path, header, cells):
    from selfexplain.references import read_reference_labels

    body = io.StringIO()
    csv.writer(body).writerows(cells)
    path = tmp_path / "ref.csv"
    path.write_text(header + "\n" + body.getvalue())
    rows = parsed(read_reference_labels, path, release="r", sae_id="s")
    if rows is not None:
        assert_reference_rows(rows)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
@pytest.mark.parametrize("data", [b"\xff\xfe not utf-8", b"\x00" * 10])
def test_reference_label_file_not_text(tmp_path, data, suffix):
    from selfexplain.references import read_reference_labels

    path = tmp_path / f"ref{suffix}"
    path.write_bytes(data)
    with pytest.raises(SelfExplainError) as info:
        read_reference_labels(path, release="r", sae_id="s")
    one_line(info.value)
