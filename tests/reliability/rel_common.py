"""Helpers of the reliability suite: engine flags that keep a relabel run to seconds, SAE files,
warehouse contents compared without run ids and timestamps, and the CLI's one-line errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl
import torch

from selfexplain.warehouse import Warehouse

D_MODEL, N_LAYERS, D_SAE = 32, 6, 16
"""The tiny Llama of tests/conftest.py, and the width of the tiny SAEs here."""

ENGINE = ["--scales", "0:2:4", "--samples", "1", "--max-new-tokens", "4"]
"""Engine flags that keep a tiny-model shard to a fraction of a second."""

VOLATILE = {
    "label": ["run_id", "labelled_at", "seconds"],
    "label_current": ["run_id", "labelled_at"],
    "explanation": ["run_id"],
    "scale_metric": ["run_id"],
    "shard_done": ["run_id", "done_at", "seconds"],
    "sae": ["first_seen", "last_seen"],
    "v_feature_labels": ["run_id", "labelled_at"],
}
"""Per-feature tables (and the public view) with the columns that differ between two runs of the
same request: which run wrote a row and when."""


def write_raw_sae(path: Path, decoder: torch.Tensor) -> Path:
    """A bare SAE file: `W_dec` (d_sae, d_model) in safetensors (loads without sae-lens)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"W_dec": decoder.contiguous()}, str(path))
    return path


def relabel_args(model: str, sae: str, warehouse: Path | str, features: str = "0-11",
                 shard_size: int = 3, *extra: str) -> list[str]:
    return ["relabel", "--model", model, "--sae", sae, "--features", features, "--shard-size",
            str(shard_size), "--warehouse", str(warehouse), "--no-collect", *ENGINE, *extra]


def contents(path: Path | str, tables=tuple(VOLATILE)) -> dict[str, pl.DataFrame]:
    """Per-feature tables and v_feature_labels without run ids and timestamps, sorted."""
    out = {}
    with Warehouse(path) as wh:
        for table in tables:
            rows = wh.table(table).drop(VOLATILE[table])
            out[table] = rows.sort(rows.columns)
    return out


def all_rows(path: Path | str) -> dict[str, pl.DataFrame]:
    """Every table, exactly (for 'the warehouse is as it was')."""
    with Warehouse(path, read_only=True) as wh:
        return {t: wh.table(t).sort(wh.table(t).columns) for t in wh.tables()}


def assert_same_rows(a: dict[str, pl.DataFrame], b: dict[str, pl.DataFrame]) -> None:
    assert a.keys() == b.keys()
    for table in a:
        assert a[table].equals(b[table]), f"{table} differs:\n{a[table]}\n{b[table]}"


def sha256(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def one_error_line(err: str) -> str:
    """The CLI's error: exactly one `error: ...` line, no traceback anywhere."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]
