"""Configuration and input parsers: bad grids and feature lists get one clear error."""

import pytest

from selfexplain.config import ExplainConfig, parse_scales
from selfexplain.errors import InputError
from selfexplain.saes import parse_features


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("5,3,8", "not strictly increasing"),
    ("0,0,1", "not strictly increasing"),
    ("-1,2", "negative"),
    ("0,nan", "NaN"),
    ("a,b", "not a list"),
    ("0:10:0", "count"),
])
def test_bad_scale_grids(text, message):
    with pytest.raises(InputError, match=message):
        parse_scales(text)


def test_scale_grids_parse():
    assert parse_scales("0,10,20") == (0.0, 10.0, 20.0)
    assert parse_scales("0:200:5") == (0.0, 50.0, 100.0, 150.0, 200.0)


def test_presets_and_overrides():
    faithful = ExplainConfig.from_preset("faithful")
    assert faithful.scale_unit == "absolute" and faithful.alpha == 0.4 and faithful.min_scale == 10
    assert len(faithful.generation_scales) == 32 and faithful.selection == "composite"
    custom = ExplainConfig.from_preset("default", seed=7, samples_per_scale=None)
    assert custom.seed == 7 and custom.preset == "default"
    with pytest.raises(InputError, match="unknown preset"):
        ExplainConfig.from_preset("fast")
    with pytest.raises(InputError, match="metric_scales"):
        ExplainConfig.from_preset("default", metric_scales=(3.0, 1.0))
    with pytest.raises(InputError, match="probe layer"):
        ExplainConfig.from_preset("default", injection_layer=5, probe_layer=3)
    with pytest.raises(Exception):
        faithful.alpha = 0.5  # frozen


def test_settings_hash_is_stable_and_sensitive():
    a = ExplainConfig.from_preset("default")
    assert a.settings_hash() == ExplainConfig.from_preset("default").settings_hash()
    assert a.settings_hash() != ExplainConfig.from_preset("default", seed=1).settings_hash()


@pytest.mark.parametrize("text, expected", [
    ("0-3", [0, 1, 2, 3]), ("12,40", [12, 40]), ("5, 0-1", [0, 1, 5]), ("7", [7]),
])
def test_feature_lists(text, expected):
    assert parse_features(text) == expected


@pytest.mark.parametrize("text, message", [
    ("", "empty"), (" , ", "empty"), ("7-3", "reversed"), ("a-b", "not an index"), ("-3", "not an index"),
])
def test_bad_feature_lists(text, message):
    with pytest.raises(InputError, match=message):
        parse_features(text)


def test_token_recovery_keys_runs_but_not_nulls_and_answer_keeps_old_hashes():
    peak = ExplainConfig.from_preset("default", adapter="none")
    answer = ExplainConfig.from_preset("default", token_recovery="answer", adapter="none")
    assert peak.token_recovery == "peak" and ExplainConfig.from_preset(
        "faithful").token_recovery == "answer"
    assert peak.settings_hash() != answer.settings_hash()
    assert peak.null_hash() == answer.null_hash()  # the null reads meaning answers only
    # runs stored before the field existed: their settings dumped without it hash the same
    import hashlib

    before = answer.model_dump_json(exclude={"token_recovery", "precision", "adapter"})
    assert answer.settings_hash() == hashlib.sha256(before.encode()).hexdigest()[:16]
