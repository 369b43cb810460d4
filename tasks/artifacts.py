"""Monitoring in the Prefect UI: a progress bar per run, tables of labels and failures, a markdown
summary and a PNG of the scale sweep (self-similarity, entropy, composite against scale)."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from uuid import UUID

import polars as pl
from prefect import get_run_logger, task
from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

MAX_TABLE_ROWS = 500
"""Rows shown in a table artifact; the warehouse has them all."""
PLOT_FEATURES = 4
LABEL_COLUMNS = ["feature", "label", "recovered_token", "recovered_reliable", "scale", "composite",
                 "max_selfsim", "failed", "failure_reason", "top_labels"]
"""Columns of the labels table artifact (v_feature_labels has more)."""


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    key = re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
    return key[:120].strip("-") or "selfexplain"


def start_progress(key: str, total_shards: int) -> UUID:
    return create_progress_artifact(0.0, key=artifact_key(key, "progress"),
                                    description=f"0 of {total_shards} shards")


def update_progress(artifact_id: UUID, done: int, total: int) -> None:
    percent = 100.0 if total == 0 else 100.0 * done / total
    update_progress_artifact(artifact_id, percent, description=f"{done} of {total} shards")


def table_rows(frame: pl.DataFrame, limit: int = MAX_TABLE_ROWS) -> list[dict[str, object]]:
    """JSON-ready rows: timestamps and lists as text, floats rounded for reading."""
    out = frame.head(limit).with_columns(
        [pl.col(c).cast(pl.String) for c, t in frame.schema.items() if t.is_temporal()]
        + [pl.col(c).list.join(" | ") for c, t in frame.schema.items()
           if isinstance(t, pl.List) and t.inner == pl.String]
        + [pl.col(c).round(4) for c, t in frame.schema.items() if t.is_float()]
    )
    return out.to_dicts()


def sweep_png(sweeps: pl.DataFrame, title: str) -> bytes:
    """Self-similarity, entropy and composite against scale for a few features (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), constrained_layout=True)
    features = sweeps["feature"].unique(maintain_order=True).to_list()[:PLOT_FEATURES]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for color, feature in zip(colors, features):
        for prompt, style in (("meaning", "-"), ("repeat", "--")):
            part = sweeps.filter((pl.col("feature") == feature) & (pl.col("prompt") == prompt))
            part = part.sort("scale")
            if part.height == 0:
                continue
            label = f"f{feature} {prompt}"
            for ax, metric in zip(axes, ("selfsim", "entropy", "composite")):
                ax.plot(part["scale"], part[metric], style, color=color, label=label, lw=1.4)
    for ax, name in zip(axes, ("self-similarity - baseline", "entropy - baseline", "composite")):
        ax.set_title(name)
        ax.set_xlabel("scale (L2 norm injected)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def summary_markdown(summary: dict[str, object], labels: pl.DataFrame, png_path: str | None,
                     png_data_url: str | None) -> str:
    lines = [
        f"# relabel {summary['release']}/{summary['sae_id']}",
        "",
        "| field | value |", "|---|---|",
    ]
    for key in ("run_id", "model", "model_id", "preset", "settings_hash", "request_hash",
                "n_features", "n_shards", "n_shards_skipped", "n_labelled", "n_failed",
                "n_skipped", "seconds", "warehouse", "out_dir"):
        if summary.get(key) is not None:
            lines.append(f"| {key} | `{summary[key]}` |")
    lines += ["", "## Labels (first 10)", "", "| feature | label | token | failed |",
              "|---|---|---|---|"]
    for row in labels.head(10).iter_rows(named=True):
        text = (row.get("label") or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {row['feature']} | {text} | {row.get('recovered_token') or ''} | "
                     f"{row['failed']} |")
    if summary.get("query"):
        lines += ["", "## Query them", "", "```sql", str(summary["query"]), "```"]
    if png_data_url:
        lines += ["", "## Scale sweep", "", f"![scale sweep]({png_data_url})"]
    if png_path:
        lines += ["", f"PNG: `{png_path}`"]
    return "\n".join(lines)


@task(name="publish-artifacts", cache_policy=NO_CACHE, persist_result=False)
def publish_artifacts(summary: dict[str, object], labels: pl.DataFrame, sweeps: pl.DataFrame,
                      plot_dir: str | None) -> dict[str, str | None]:
    """Labels table, failures table, scale-sweep PNG (file + image artifact), markdown summary."""
    base = artifact_key("relabel", str(summary["release"]), str(summary["sae_id"]))
    shown = labels.select([c for c in LABEL_COLUMNS if c in labels.columns])
    create_table_artifact(table_rows(shown), key=artifact_key(base, "labels"),
                          description=f"labels of run {summary['run_id']}")
    failures = labels.filter(pl.col("failed"))
    create_table_artifact(table_rows(failures.select(
        [c for c in ("feature", "failure_reason", "max_roundtrip", "max_selfsim", "label",
                     "recovered_token") if c in failures.columns])) or [{"feature": None}],
        key=artifact_key(base, "failures"), description=f"{failures.height} failed or skipped")
    png_path = data_url = None
    if sweeps.height:
        png = sweep_png(sweeps, f"{summary['release']}/{summary['sae_id']}, run {summary['run_id']}")
        data_url = "data:image/png;base64," + base64.b64encode(png).decode()
        if plot_dir:
            path = Path(plot_dir) / f"scale_sweep-{summary['run_id']}.png"
            try:  # monitoring only: a full or read-only disk must not fail a stored run
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(png)
                png_path = str(path)
            except OSError as err:
                get_run_logger().warning(f"cannot write the scale sweep plot {path}: "
                                         f"{err.strerror or err}")
        create_image_artifact(data_url, key=artifact_key(base, "scale-sweep"),
                              description="selfsim, entropy, composite vs scale")
    create_markdown_artifact(summary_markdown(summary, labels, png_path, data_url),
                             key=artifact_key(base, "summary"),
                             description=f"relabel run {summary['run_id']}")
    return {"png": png_path}
