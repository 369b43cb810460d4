"""An SAE's encoder, for `collect`: sae-lens SAEs (registry, folder, the default) and bare files.

sae-lens SAEs encode with sae-lens itself (every architecture it knows: standard, TopK,
JumpReLU, gated). A bare `.safetensors` needs `W_enc` (d_in, d_sae) beside `W_dec`; it encodes
as JumpReLU when it holds `threshold`, as TopK when `k` is given, else as ReLU, with `b_dec`
subtracted from the input when present (sae-lens's `apply_b_dec_to_input`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor

from selfexplain.collect import SaeEncoder
from selfexplain.errors import SaeLoadError
from selfexplain.saes import DEFAULT_SAE, DEFAULT_SAE_DIR, registry, resid_layer_of, \
    resolve_registry_id

RESID_HOOK = re.compile(r"blocks\.(\d+)\.hook_resid_(pre|post)$")


def reading_layer(hook_name: str | None, layer: int | None) -> tuple[int, str]:
    """(the block whose input residual the SAE reads, its hook name) from a hook or a layer."""
    if layer is not None:
        return layer, f"blocks.{layer}.hook_resid_pre"
    if not hook_name:
        raise SaeLoadError("the SAE does not say which hook it reads: pass --layer L (the "
                           "residual entering block L) or --hook blocks.L.hook_resid_pre")
    if RESID_HOOK.search(hook_name) is None:
        raise SaeLoadError(f"the SAE reads {hook_name}: collect reads residual-stream SAEs "
                           "(blocks.L.hook_resid_pre or _post); pass --layer to override")
    return int(resid_layer_of(hook_name)), hook_name


def load_encoder(spec: str, *, layer: int | None = None, hook_name: str | None = None,
                 k: int | None = None) -> SaeEncoder:
    """The encoder of `default`, a sae-lens folder, `RELEASE/SAE_ID` or a `.safetensors` file."""
    path = DEFAULT_SAE_DIR if spec == DEFAULT_SAE else Path(spec).expanduser()
    if path.is_dir():
        return _folder_encoder(path, layer, hook_name)
    if spec.endswith(".safetensors"):
        return _file_encoder(path, layer, hook_name, k)
    if "/" not in spec:
        raise SaeLoadError(f"SAE {spec!r} is neither `default`, a folder, a .safetensors file, "
                           "nor RELEASE/SAE_ID")
    release, sae_id = spec.split("/", 1)
    resolve_registry_id(release, sae_id, registry())
    from sae_lens import SAE

    try:
        sae = SAE.from_pretrained(release, sae_id, device="cpu")
    except Exception as err:  # network, auth, missing files
        raise SaeLoadError(f"cannot download SAE {release}/{sae_id}: {type(err).__name__}: "
                           f"{str(err)[:120]} (offline? download it elsewhere and pass its "
                           "folder)") from None
    return _from_sae_lens(sae, {}, layer, hook_name)


def _folder_encoder(path: Path, layer: int | None, hook_name: str | None) -> SaeEncoder:
    try:
        cfg = json.loads((path / "cfg.json").read_text())
    except (OSError, ValueError) as err:
        raise SaeLoadError(f"cannot read {path / 'cfg.json'}: {err}") from None
    from sae_lens import SAE

    try:
        sae = SAE.load_from_disk(str(path), device="cpu")
    except Exception as err:
        first = " ".join(str(err).split())[:160]
        raise SaeLoadError(f"cannot load SAE folder {path}: {type(err).__name__}: {first}") \
            from None
    return _from_sae_lens(sae, cfg, layer, hook_name)


def _from_sae_lens(sae, cfg: dict, layer: int | None, hook_name: str | None) -> SaeEncoder:
    meta = cfg.get("metadata", {}) if isinstance(cfg, dict) else {}
    hook = hook_name or getattr(sae.cfg.metadata, "hook_name", None)
    read_layer, hook = reading_layer(hook, layer)
    training = (meta.get("selfexplain_training") or {}).get("config", {})
    context = training.get("context") or getattr(sae.cfg.metadata, "context_size", None)
    seed = training.get("seed")
    sae.eval()

    @torch.inference_mode()
    def encode(x: Tensor) -> Tensor:
        return sae.encode(x.to(sae.W_dec.dtype)).float()

    return SaeEncoder(encode=encode, decoder=sae.W_dec.detach().float().cpu(),
                      resid_layer=read_layer, hook_name=hook,
                      context_size=int(context) if context else None,
                      seed=int(seed) if seed is not None else None)


def _file_encoder(path: Path, layer: int | None, hook_name: str | None,
                  k: int | None) -> SaeEncoder:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise SaeLoadError(f"safetensors file not found: {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise SaeLoadError(f"cannot read {path}: {err}; the file is corrupt or truncated") \
            from None
    if "W_dec" not in tensors:
        raise SaeLoadError(f"{path} has no tensor named W_dec (found: {sorted(tensors)[:5]})")
    decoder = tensors["W_dec"].float()  # (d_sae, d_in)
    if "W_enc" not in tensors:
        raise SaeLoadError(f"{path} holds W_dec but no W_enc: collect needs the encoder to know "
                           "where each latent fires; give the full SAE")
    d_sae, d_in = decoder.shape
    w_enc = tensors["W_enc"].float()
    if w_enc.shape == (d_sae, d_in) and d_sae != d_in:
        w_enc = w_enc.T
    if w_enc.shape != (d_in, d_sae):
        raise SaeLoadError(f"W_enc in {path} has shape {tuple(w_enc.shape)}; expected "
                           f"({d_in}, {d_sae}) to match W_dec {tuple(decoder.shape)}")
    b_enc = tensors.get("b_enc", torch.zeros(d_sae)).float()
    b_dec = tensors.get("b_dec", torch.zeros(d_in)).float()
    threshold = tensors.get("threshold")
    if k is not None and not 1 <= k <= d_sae:
        raise SaeLoadError(f"--k {k} must be between 1 and the SAE's {d_sae} latents")
    read_layer, hook = reading_layer(hook_name, layer)

    @torch.inference_mode()
    def encode(x: Tensor) -> Tensor:
        pre = (x.float() - b_dec) @ w_enc + b_enc  # (n, d_sae)
        if threshold is not None:
            return pre * (pre > threshold.float())
        if k is not None:
            values, indices = pre.topk(k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, indices, values.relu())
        return pre.relu()

    return SaeEncoder(encode=encode, decoder=decoder, resid_layer=read_layer, hook_name=hook)
