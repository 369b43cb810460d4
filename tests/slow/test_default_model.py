"""The real embedded default model (SmolLM2-135M-Instruct). Marked slow: about a minute or two.

Run with `pytest -m slow`; `make test` runs them too (they fit CI's budget).
"""

import json
import os

import pytest
import torch

from cli.cli import main
from selfexplain.config import ExplainConfig
from selfexplain.explain import SelfExplainer
from selfexplain.models import DEFAULT_MODEL_ID, load_model, resolve_precision
from selfexplain.vectors import word_directions

pytestmark = pytest.mark.slow

PRECISION = resolve_precision("auto")
"""As the CLI and the flows run it: bfloat16 where this CPU runs it natively (grouped attention,
inverse-CDF sampling), else float32."""

# Not the evaluation's DEV/TEST lists: a fixed small set for this smoke check only.
WORDS = [" dog", " red", " king", " water", " happy", " music", " bread", " winter", " horse",
         " money", " fire", " ship"]


@pytest.fixture(scope="module")
def default_lm():
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield load_model("default")
    torch.set_num_threads(threads)


def test_default_model_loads_and_is_verified(default_lm):
    assert default_lm.model_id == DEFAULT_MODEL_ID
    assert default_lm.revision.startswith("gguf-b179c9523d0e")
    assert (default_lm.n_layers, default_lm.d_model) == (30, 576)


def test_cli_explain_word_json(capsys):
    assert main(["explain", "--word", " dog", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["name"] == " dog"
    assert 1 <= len(row["explanations"]) <= 3
    assert all(e["text"] and e["scale"] > 0 for e in row["explanations"])
    assert isinstance(row["max_selfsim"], float) and row["recovered_token"]


def _named(word: str, texts: list[str]) -> bool:
    return any(word.strip().lower() in text.lower() for text in texts)


def test_planted_words_are_named_far_more_often_than_random_directions():
    default_lm = load_model("default", dtype=getattr(torch, PRECISION))
    explainer = SelfExplainer(default_lm, ExplainConfig.from_preset("default", precision=PRECISION))
    planted = word_directions(default_lm, WORDS, explainer.injection_layer)
    generator = torch.Generator().manual_seed(0)
    random = torch.randn(len(WORDS), default_lm.d_model, generator=generator)
    got_planted = explainer.explain(planted, list(range(len(WORDS))), WORDS)
    got_random = explainer.explain(random, list(range(len(WORDS))), WORDS)
    hits_planted = sum(_named(w, [c.text for c in r.explanations]) for w, r in zip(WORDS, got_planted))
    hits_random = sum(_named(w, [c.text for c in r.explanations]) for w, r in zip(WORDS, got_random))
    flagged_planted = sum(r.failed for r in got_planted)
    flagged_random = sum(r.failed for r in got_random)
    print(f"planted {hits_planted}/{len(WORDS)}, random {hits_random}/{len(WORDS)}; flagged as "
          f"failures: planted {flagged_planted}, random {flagged_random}")
    assert hits_planted >= 4
    assert hits_planted >= 3 * hits_random + 2
    # the round-trip failure flag: random directions read back as nothing
    assert flagged_random >= flagged_planted + len(WORDS) // 2


def test_gguf_cache_gives_the_same_model_and_survives_damage(tmp_path, default_lm):
    from selfexplain.models import CACHE_COMPLETE

    cache = tmp_path / "cache"
    built = load_model("default", cache_dir=cache)  # de-quantises the GGUF and writes the cache
    (folder,) = cache.iterdir()
    assert (folder / CACHE_COMPLETE).is_file() and not list(cache.glob(".*tmp*"))
    cached = load_model("default", cache_dir=cache)  # reads the safetensors folder
    text = 'The meaning of the word "X" is "'
    ids = default_lm.tokenizer(text, return_tensors="pt").input_ids
    assert cached.tokenizer(text, return_tensors="pt").input_ids.tolist() == ids.tolist()
    assert cached.tokenizer.chat_template == default_lm.tokenizer.chat_template
    assert cached.revision == default_lm.revision == built.revision
    with torch.no_grad():
        assert torch.equal(cached.model(ids).logits, default_lm.model(ids).logits)
    (folder / "model.safetensors").write_bytes(b"torn")  # a damaged cache is rebuilt, not trusted
    again = load_model("default", cache_dir=cache)
    with torch.no_grad():
        assert torch.equal(again.model(ids).logits, default_lm.model(ids).logits)
    assert (folder / "model.safetensors").stat().st_size > 100_000_000


def test_the_shipped_adapter_applies_to_the_default_model_and_names_more_words():
    from selfexplain.adapter import resolve_for_model, shipped_adapter_path, load_adapter

    default_lm = load_model("default", dtype=getattr(torch, PRECISION))
    shipped = load_adapter(shipped_adapter_path())
    # `auto` finds it for this model (in either precision: the fingerprint rounds to bfloat16)
    assert resolve_for_model("auto", default_lm, 2).digest == shipped.digest
    assert resolve_for_model("auto", default_lm, 3) is None  # trained for layer 2 only
    hits = {}
    for spec in ("none", "auto"):
        config = ExplainConfig.from_preset("default", precision=PRECISION, adapter=spec)
        explainer = SelfExplainer(default_lm, config)
        planted = word_directions(default_lm, WORDS, explainer.injection_layer)
        results = explainer.explain(planted, list(range(len(WORDS))), WORDS)
        hits[spec] = sum(_named(w, [c.text for c in r.explanations]) for w, r in zip(WORDS, results))
        assert all("\n" not in c.text for r in results for c in r.candidates)
    print(f"planted words named in the top 3: without the adapter {hits['none']}/{len(WORDS)}, "
          f"with it {hits['auto']}/{len(WORDS)}")
    assert hits["auto"] >= max(hits["none"], len(WORDS) - 3)
