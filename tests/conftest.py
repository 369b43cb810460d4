"""Shared fixtures: tiny seeded models (Llama, Gemma, Gemma 3, Phi-3) with an in-code tokenizer, tiny SAEs.

A unit test never loads a real model: these build in milliseconds. Tests marked `slow` load the
embedded default model.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Nothing a test does may touch the user's Prefect home.
os.environ.setdefault("PREFECT_HOME", __import__("tempfile").mkdtemp(prefix="selfexplain-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Statistics that tests collect go to a temporary cache, never the user's.
os.environ["SELFEXPLAIN_STATS"] = __import__("tempfile").mkdtemp(prefix="selfexplain-stats-")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# Tiny models are fastest on one thread (OpenMP start-up and contention dominate); the slow tests
# on the real model raise it for themselves.
torch.set_num_threads(1)

from selfexplain.models import LoadedModel  # noqa: E402

SPECIAL_TOKENS = [
    "<pad>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>",
    "<|user|>", "<|assistant|>", "<|end|>",
]
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer(bos: bool = False):
    """A character-level fast tokenizer with chat specials: every printable char is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="?",
        additional_special_tokens=SPECIAL_TOKENS[3:],
        chat_template=CHATML_TEMPLATE,
    )
    if bos:
        from tokenizers import processors

        backend.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
        )
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
            unk_token="?", additional_special_tokens=SPECIAL_TOKENS[3:], chat_template=CHATML_TEMPLATE,
        )
    return tokenizer


def build_tiny_model(family: str = "llama", *, n_layers: int = 6, d_model: int = 32, seed: int = 0):
    """A seeded random causal LM of the given family and its tokenizer, as a LoadedModel."""
    from transformers import (
        AutoModelForCausalLM,
        Gemma3TextConfig,
        GemmaConfig,
        LlamaConfig,
        Phi3Config,
    )

    tokenizer = build_tiny_tokenizer(bos=family in ("gemma", "gemma3"))
    common = dict(
        vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=2 * d_model,
        num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    if family == "llama":
        config = LlamaConfig(**common)
    elif family == "gemma":
        config = GemmaConfig(head_dim=d_model // 4, **common)
    elif family == "gemma3":  # sliding-window and global layers, q/k norms, scaled embeddings;
        # the window exceeds every prompt, as on the real models (512; the engine refuses less)
        config = Gemma3TextConfig(head_dim=d_model // 4, sliding_window=512,
                                  query_pre_attn_scalar=d_model // 4, **common)
    elif family == "phi3":
        config = Phi3Config(**common)
    else:
        raise ValueError(family)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return LoadedModel(model, tokenizer, f"tiny-{family}", "random")


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server for the whole session (flows/ and reliability/ use it; about 10 s
    to start). Harmless "database is locked" lines in its log are expected."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_lm() -> LoadedModel:
    return build_tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_lm) -> str:
    """The session's tiny Llama saved with save_pretrained (model + tokenizer): flows and
    subprocesses pass model ids, not tensors, so they load it by path."""
    path = tmp_path_factory.mktemp("tiny_model")
    tiny_lm.model.save_pretrained(path)
    tiny_lm.tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session", params=["llama", "gemma", "gemma3", "phi3"])
def tiny_lm_any(request) -> LoadedModel:
    return build_tiny_model(request.param)


def write_sae_folder(path: Path, d_in: int, d_sae: int, *, seed: int = 0,
                     hook_name: str = "blocks.1.hook_resid_post",
                     decoder: torch.Tensor | None = None) -> Path:
    """Write a tiny standard SAE in sae-lens folder format (cfg.json + sae_weights.safetensors)."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    if decoder is None:
        decoder = torch.randn(d_sae, d_in, generator=generator)
    path.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "W_enc": decoder.T.contiguous().clone(),
            "W_dec": decoder.contiguous().clone(),
            "b_enc": torch.zeros(d_sae),
            "b_dec": torch.zeros(d_in),
        },
        str(path / "sae_weights.safetensors"),
    )
    cfg = {
        "architecture": "standard", "d_in": d_in, "d_sae": d_sae, "dtype": "float32",
        "device": "cpu", "apply_b_dec_to_input": False, "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": "6.54.12", "hook_name": hook_name, "model_name": "tiny",
            "prepend_bos": True, "context_size": 128,
        },
    }
    (path / "cfg.json").write_text(json.dumps(cfg))
    return path


@pytest.fixture
def tiny_sae_dir(tmp_path, tiny_lm) -> Path:
    return write_sae_folder(tmp_path / "tiny_sae", tiny_lm.d_model, 16)
