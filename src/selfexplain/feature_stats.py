"""Feature statistics over held-out text: what a user looks at next to a feature's label.

One row per SAE latent (see `SCHEMA`): activation density, mean and max activation, the top
activating contexts with the token marked `«like this»`, the tokens carrying most of the
activation, a single-token flag, and the VocabProj tokens of the decoder direction. Evaluation uses
the single-token flag and the top token as ground truth for token recovery.

The core (`feature_stats`) takes plain tensors of (token, feature, activation) triples so that a
planted dataset tests it exactly; `stats_from_activations` encodes held-out activations with an
SAE to produce them (`train_sae.train_sae_with_statistics` does, on the training run's own
held-out documents; `collect` streams its own over a corpus).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import torch
from torch import Tensor
from tqdm.auto import tqdm

from selfexplain.errors import InputError
from selfexplain.models import LoadedModel

STATS_FILE = "feature_stats.parquet"
N_CONTEXTS = 20
"""Top activating contexts kept per feature."""
N_TOP_TOKENS = 10
N_VOCABPROJ = 10
CONTEXT_LEFT = 12
"""Tokens shown before the activating token."""
CONTEXT_RIGHT = 4
SINGLE_TOKEN_SHARE = 0.5
SINGLE_TOKEN_MIN_FIRINGS = 5
"""Single-token rule: a feature is `single_token` when one token id carries at least
SINGLE_TOKEN_SHARE of its total activation mass on the held-out text and it fired at least
SINGLE_TOKEN_MIN_FIRINGS times (so a feature seen twice is not called single-token by accident)."""

SCHEMA = {
    "feature": pl.Int64,
    "density": pl.Float64,
    "mean_activation": pl.Float64,
    "max_activation": pl.Float64,
    "top_tokens": pl.List(pl.String),
    "top_token_share": pl.Float64,
    "single_token": pl.Boolean,
    "vocabproj_tokens": pl.List(pl.String),
    "top_contexts": pl.List(pl.Struct({"text": pl.String, "activation": pl.Float64})),
    "token_alignment": pl.Float64,
}
OPTIONAL = ("token_alignment",)
"""Columns added after the first statistics files: read as null when a file lacks them."""
"""`density`: fraction of held-out tokens where the feature is active (> 0). `mean_activation`:
mean over the tokens where it is active (0 for a dead feature). `top_token_share`: share of the
feature's activation mass on its top token (0 for a dead feature). `token_alignment` (single-token
features only, else null): cosine between the unit decoder row and the top token's mean-free
residual direction at the SAE's layer (`vectors.word_directions`, the planted direction of that
token): how well the direction the engine injects points at what the feature fires on."""


def _grouped(features: Tensor, keys: Tensor, d: int) -> tuple[Tensor, Tensor]:
    """Order entries by feature, then by `keys` descending (stable); and each feature's offset."""
    order = torch.sort(keys, descending=True, stable=True).indices
    order = order[torch.sort(features[order], stable=True).indices]
    counts = torch.bincount(features, minlength=d)
    return order, torch.cumsum(counts, 0) - counts


def feature_stats(windows: Tensor, token_index: Tensor, features: Tensor, values: Tensor, *,
                  d_sae: int, n_tokens: int, decode: Callable[[list[int]], str],
                  vocabproj: list[list[str]] | None = None) -> pl.DataFrame:
    """Statistics of every feature from sparse activations.

    windows: (n_seq, seq_len) token ids of the held-out text.
    token_index, features, values: (nnz,) each: a flat index into `windows`, the feature, and its
      activation; entries with value <= 0 are ignored.
    n_tokens: tokens that were encoded (the density denominator; e.g. position 0 excluded).
    decode: token ids -> text.  vocabproj: per feature, its VocabProj tokens (or None).
    """
    if n_tokens <= 0:
        raise InputError("feature statistics need at least one held-out token")
    if vocabproj is not None and len(vocabproj) != d_sae:
        raise InputError(f"vocabproj has {len(vocabproj)} rows for {d_sae} features")
    keep = values > 0
    canonical = torch.argsort(token_index[keep], stable=True)  # ties resolve by text position
    index, feats, vals = (t[keep][canonical] for t in (token_index, features, values))
    feats = feats.long()
    vals = vals.double()
    counts = torch.bincount(feats, minlength=d_sae)  # (d_sae,)
    sums = torch.zeros(d_sae, dtype=torch.float64).index_add_(0, feats, vals)
    maxes = torch.zeros(d_sae, dtype=torch.float64).scatter_reduce_(0, feats, vals, "amax")
    flat = windows.reshape(-1)
    seq_len = windows.shape[1]
    texts = windows.tolist()

    order, offsets = _grouped(feats, vals, d_sae)  # activations, best first within each feature
    token_ids = flat[index]
    vocab = int(flat.max()) + 1 if flat.numel() else 1
    pair_keys, pair_inverse = torch.unique(feats * vocab + token_ids, return_inverse=True)
    pair_sums = torch.zeros(len(pair_keys), dtype=torch.float64).index_add_(0, pair_inverse, vals)
    pair_feats = pair_keys // vocab
    pair_order, pair_offsets = _grouped(pair_feats, pair_sums, d_sae)
    pair_counts = torch.bincount(pair_feats, minlength=d_sae).tolist()
    offsets, pair_offsets = offsets.tolist(), pair_offsets.tolist()
    index_list, order_list, pair_order_list = index.tolist(), order.tolist(), pair_order.tolist()

    rows: dict[str, list] = {name: [] for name in SCHEMA}
    for f in range(d_sae):
        n_f = int(counts[f])
        contexts = []
        for j in order_list[offsets[f]: offsets[f] + min(N_CONTEXTS, n_f)]:
            seq, pos = divmod(index_list[j], seq_len)
            row = texts[seq]
            text = (decode(row[max(0, pos - CONTEXT_LEFT):pos]) + "«" + decode([row[pos]]) + "»"
                    + decode(row[pos + 1:pos + 1 + CONTEXT_RIGHT]))
            contexts.append({"text": text, "activation": float(vals[j])})
        tops = pair_order_list[pair_offsets[f]: pair_offsets[f] + min(N_TOP_TOKENS, pair_counts[f])]
        top_tokens = [decode([int(pair_keys[p] % vocab)]) for p in tops]
        share = float(pair_sums[tops[0]] / sums[f]) if tops and sums[f] > 0 else 0.0
        rows["feature"].append(f)
        rows["density"].append(n_f / n_tokens)
        rows["mean_activation"].append(float(sums[f] / n_f) if n_f else 0.0)
        rows["max_activation"].append(float(maxes[f]))
        rows["top_tokens"].append(top_tokens)
        rows["top_token_share"].append(share)
        rows["single_token"].append(share >= SINGLE_TOKEN_SHARE and n_f >= SINGLE_TOKEN_MIN_FIRINGS)
        rows["vocabproj_tokens"].append(list(vocabproj[f]) if vocabproj is not None else [])
        rows["top_contexts"].append(contexts)
        rows["token_alignment"].append(None)
    return pl.DataFrame(rows, schema=SCHEMA)


def token_alignment(lm: LoadedModel, decoder: Tensor, frame: pl.DataFrame, layer: int) -> pl.DataFrame:
    """Fill `token_alignment` for the single-token features of `frame`.

    decoder: (d_sae, d_model) decoder rows (any norm). The token direction is the one a planted
    concept uses (`vectors.word_directions`), so this cosine is directly the quality of what the
    engine injects for that feature.
    """
    from selfexplain.vectors import word_directions

    single = frame.filter(pl.col("single_token") & (pl.col("top_tokens").list.len() > 0))
    tokens = [tops[0] for tops in single["top_tokens"].to_list()]
    usable = [i for i, t in enumerate(tokens) if t.strip()]
    values: dict[int, float] = {}
    if usable:
        directions = word_directions(lm, [tokens[i] for i in usable], layer)  # (n, d_model)
        feats = single["feature"].to_numpy()[usable]
        rows = decoder[torch.as_tensor(feats)].float()
        rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        cos = (rows * directions).sum(-1).tolist()
        values = dict(zip(feats.tolist(), cos, strict=True))
    column = pl.Series("token_alignment", [values.get(f) for f in frame["feature"].to_list()],
                       dtype=pl.Float64)
    return frame.with_columns(column)


def final_norm_gain(lm: LoadedModel) -> Tensor | None:
    """Elementwise gain of the final norm before the unembedding (Gemma stores it as 1 + w)."""
    inner = getattr(lm.model, "model", None)
    norm = getattr(inner, "norm", None)
    weight = getattr(norm, "weight", None)
    if weight is None:
        return None
    weight = weight.detach().float()
    return 1.0 + weight if lm.family == "gemma" else weight


@torch.inference_mode()
def vocab_projection(lm: LoadedModel, directions: Tensor, *, top: int = N_VOCABPROJ,
                     batch: int = 512) -> list[list[str]]:
    """VocabProj: top tokens of unembed(gain * d) for each direction (n, d_model) (logit lens)."""
    unembed = lm.model.get_output_embeddings().weight.detach().float()  # (vocab, d_model)
    gain = final_norm_gain(lm)
    out: list[list[str]] = []
    for start in range(0, directions.shape[0], batch):
        d = directions[start:start + batch].float().to(unembed.device)  # (b, d_model)
        if gain is not None:
            d = d * gain.to(d.device)
        ids = (d @ unembed.T).topk(min(top, unembed.shape[0]), dim=-1).indices  # (b, top)
        out.extend([[lm.tokenizer.decode([t]) for t in row] for row in ids.tolist()])
    return out


def write_sae_statistics(lm: LoadedModel, sae, sae_dir: Path, windows: Tensor,
                         acts: Tensor) -> pl.DataFrame:
    """Compute and write both files that ship beside an SAE: feature_stats.parquet and
    typical_inputs.safetensors (from held-out `windows` and their activations `acts`)."""
    frame = stats_from_activations(lm, sae, windows, acts)
    write_feature_stats(frame, Path(sae_dir))
    write_typical_inputs(typical_inputs(sae, acts), Path(sae_dir))
    return frame


@torch.inference_mode()
def stats_from_activations(lm: LoadedModel, sae, windows: Tensor, acts: Tensor, *,
                           batch: int = 4096) -> pl.DataFrame:
    """Encode `acts` ((n_seq * (seq_len - 1), d_in), position 0 of each window dropped) and
    compute the statistics; `sae` is a sae_lens SAE (any architecture)."""
    seq_len = windows.shape[1]
    parts: list[tuple[Tensor, Tensor, Tensor]] = []
    for start in tqdm(range(0, acts.shape[0], batch), desc="encode", unit="batch", leave=False):
        codes = sae.encode(acts[start:start + batch].float())  # (b, d_sae)
        rows, feats = torch.nonzero(codes > 0, as_tuple=True)
        row = rows + start  # activation row -> window, position (position 0 was dropped)
        flat = (row // (seq_len - 1)) * seq_len + row % (seq_len - 1) + 1
        parts.append((flat, feats, codes[rows, feats].float()))
    index, feats, vals = (torch.cat(t) for t in zip(*parts))
    d_sae = int(sae.cfg.d_sae)
    directions = sae.W_dec.detach().float()
    directions = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    frame = feature_stats(
        windows, index, feats, vals, d_sae=d_sae, n_tokens=int(acts.shape[0]),
        decode=lambda ids: lm.tokenizer.decode(ids), vocabproj=vocab_projection(lm, directions),
    )
    from selfexplain.saes import resid_layer_of

    layer = resid_layer_of(getattr(sae.cfg.metadata, "hook_name", None))
    return frame if layer is None else token_alignment(lm, directions, frame, layer)


@torch.inference_mode()
def typical_inputs(sae, acts: Tensor, *, batch: int = 4096) -> Tensor:
    """Each latent's typical input: the activation-weighted mean of the mean-free residuals where
    it fires. (d_sae, d_model); a zero row for a latent that never fired.

    `sae` is a sae_lens SAE; `acts` (n, d_model) the held-out residuals it reads. For a
    single-token feature this is close to its token's own planted direction, whatever the decoder
    row learned; `ExplainConfig.direction = "input"` explains this instead of the decoder row.
    """
    mean = acts.float().mean(0)  # (d_model,)
    d_sae = int(sae.cfg.d_sae)
    sums = torch.zeros(d_sae, acts.shape[1], dtype=torch.float64)
    mass = torch.zeros(d_sae, dtype=torch.float64)
    for start in range(0, acts.shape[0], batch):
        x = acts[start:start + batch].float()
        codes = sae.encode(x).float()  # (b, d_sae)
        sums += (codes.T @ (x - mean)).double()  # (d_sae, d_model)
        mass += codes.sum(0).double()
    return (sums / mass.clamp_min(1e-12)[:, None]).float()


def write_typical_inputs(inputs: Tensor, sae_dir: Path) -> Path:
    """Write `typical_inputs.safetensors` (float16) into an SAE folder atomically."""
    from safetensors.torch import save_file

    from selfexplain.saes import TYPICAL_INPUTS_FILE

    return write_atomically(Path(sae_dir) / TYPICAL_INPUTS_FILE, lambda partial: save_file(
        {"typical_inputs": inputs.half().contiguous()}, str(partial)))


def write_feature_stats(frame: pl.DataFrame, sae_dir: Path) -> Path:
    """Write `feature_stats.parquet` into an SAE folder atomically (temp file, then rename)."""
    return write_atomically(Path(sae_dir) / STATS_FILE, frame.write_parquet)


def write_atomically(target: Path, write: Callable[[Path], object]) -> Path:
    """`write(partial)`, then rename onto `target` (readable by all); nothing left on error."""
    partial = target.with_name(target.name + ".partial")
    try:
        write(partial)
        partial.chmod(0o644)  # safetensors writes 0600; the folder is meant to be shared
        partial.replace(target)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise InputError(f"cannot write {target}: {err.strerror or err}") from None
    return target


def load_feature_stats(sae_dir: Path) -> pl.DataFrame:
    """The statistics shipped next to an SAE (`feature_stats.parquet`), one row per feature."""
    path = Path(sae_dir) / STATS_FILE
    if not path.is_file():
        raise InputError(
            f"no feature statistics at {path}: they are computed by `selfexplain train-sae`"
        )
    try:
        frame = pl.read_parquet(path)
    except Exception as err:  # polars raises several types for a truncated or foreign file
        raise InputError(f"{path} is not a readable statistics file: {str(err)[:120]}") from None
    missing = [name for name in SCHEMA if name not in frame.columns and name not in OPTIONAL]
    if missing:
        raise InputError(f"{path} lacks column(s) {missing}: recompute the statistics")
    return frame.with_columns(pl.lit(None, dtype=SCHEMA[name]).alias(name)
                              for name in OPTIONAL if name not in frame.columns)


def warehouse_rows(frame: pl.DataFrame, *, release: str, sae_id: str) -> pl.DataFrame:
    """Rows for the warehouse table `feature_stats`: the statistics keyed by release and sae_id."""
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    return frame.select(
        pl.lit(release).alias("release"), pl.lit(sae_id).alias("sae_id"), *SCHEMA,
        pl.lit(now).alias("computed_at"),
    )
