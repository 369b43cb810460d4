"""The evaluation report: a markdown file and PNG plots (matplotlib, Agg backend) in a folder.

- `scores.png`: per suite, one bar per method and metric with its 95% interval (Wilson for
  proportions, Hanley-McNeil for AUROC, normal for means);
- `scale_curves.png`: mean self-similarity, entropy, composite and the hit rate against the scale;
- `null_hist.png`: the null distribution of the failure score per prompt with its threshold and
  the post's 0.01, next to the evaluated items' values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

SUMMARY_COLUMNS = ("suite", "method", "metric", "value", "n", "ci_low", "ci_high")


def _fmt(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table_rows(summary: pl.DataFrame) -> list[list[str]]:
    rows = []
    for r in summary.iter_rows(named=True):
        ci = ("-" if r["ci_low"] is None or math.isnan(r["ci_low"])
              else f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
        rows.append([r["suite"], r["method"], r["metric"], _fmt(r["value"]), str(r["n"]), ci])
    return rows


HEADER = ["suite", "method", "metric", "value", "n", "95% CI"]


def text_table(summary: pl.DataFrame) -> str:
    """Fixed-width table of a summary frame, for the terminal."""
    rows = [HEADER] + table_rows(summary)
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(summary: pl.DataFrame) -> str:
    rows = [HEADER] + table_rows(summary)
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(out)


def _cell(r: dict) -> str:
    ci = ("" if r["ci_low"] is None or math.isnan(r["ci_low"])
          else f" [{r['ci_low']:.2f},{r['ci_high']:.2f}]")
    return f"{_fmt(r['value'], 2)}{ci} n={r['n']}"


def pivot_text(summary: pl.DataFrame) -> str:
    """Per suite: methods as rows, metrics as columns, cells `value [low,high] n=N`."""
    blocks = []
    for suite in summary["suite"].unique(maintain_order=True).to_list():
        part = summary.filter(pl.col("suite") == suite)
        metrics = part["metric"].unique(maintain_order=True).to_list()
        methods = part["method"].unique(maintain_order=True).to_list()
        cells = {(r["method"], r["metric"]): _cell(r) for r in part.iter_rows(named=True)}
        rows = [[suite] + metrics] + [[m] + [cells.get((m, k), "-") for k in metrics]
                                      for m in methods]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_scores(summary: pl.DataFrame, path: Path) -> Path | None:
    """Per-suite grouped bars (metric groups, one bar per method) with interval error bars."""
    usable = summary.filter(pl.col("value").is_not_nan() & pl.col("n").gt(0))
    usable = usable.filter(~pl.col("method").str.ends_with("chance"))
    if usable.height == 0:
        return None
    plt = _pyplot()
    suites = usable["suite"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(len(suites), 1, figsize=(11, 3.2 * len(suites)), squeeze=False)
    for ax, suite in zip(axes[:, 0], suites):
        part = usable.filter(pl.col("suite") == suite)
        metrics = part["metric"].unique(maintain_order=True).to_list()
        methods = part["method"].unique(maintain_order=True).to_list()
        width = 0.8 / max(len(methods), 1)
        for k, method in enumerate(methods):
            xs, ys, lo, hi = [], [], [], []
            for m, metric in enumerate(metrics):
                row = part.filter((pl.col("method") == method) & (pl.col("metric") == metric))
                if row.height == 0:
                    continue
                r = row.row(0, named=True)
                xs.append(m + (k - (len(methods) - 1) / 2) * width)
                ys.append(r["value"])
                has_ci = r["ci_low"] is not None and not math.isnan(r["ci_low"])
                lo.append(max(0.0, r["value"] - r["ci_low"]) if has_ci else 0.0)
                hi.append(max(0.0, r["ci_high"] - r["value"]) if has_ci else 0.0)
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=method)
        ax.set_xticks(range(len(metrics)))
        ax.set_xticklabels(metrics, rotation=15, fontsize=8)
        ax.set_title(suite)
        ax.legend(fontsize=7, ncol=min(len(methods), 4))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scale_curves(curves: Mapping[str, pl.DataFrame], path: Path) -> Path | None:
    """Score vs scale per run: selfsim, entropy, composite and the hit rate (meaning prompt)."""
    curves = {k: v for k, v in curves.items() if v is not None and v.height}
    if not curves:
        return None
    plt = _pyplot()
    columns = ("selfsim", "entropy", "composite", "hit")
    fig, axes = plt.subplots(1, len(columns), figsize=(14, 3.2))
    for name, frame in curves.items():
        part = frame.filter(pl.col("prompt") == "meaning").sort("scale")
        for ax, column in zip(axes, columns):
            if column in part.columns:
                ax.plot(part["scale"].to_list(), part[column].to_list(), marker=".", label=name)
    for ax, column in zip(axes, columns):
        ax.set_title(column if column != "hit" else "hit rate of samples")
        ax.set_xlabel("scale (L2 norm)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_null(null: Mapping[str, Sequence[float]], thresholds: Mapping[str, float],
              observed: Mapping[str, Sequence[float]] | None, path: Path,
              post_threshold: float = 0.01) -> Path | None:
    """Histogram of the null's failure score (max self-similarity or best round trip) per
    prompt, with thresholds and observed values."""
    if not null:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(null), figsize=(5.5 * len(null), 3.2), squeeze=False)
    for ax, (prompt, values) in zip(axes[0], null.items()):
        ax.hist(list(values), bins=30, alpha=0.6, density=True, label="null (random directions)")
        for name, seen in (observed or {}).items():
            if name.startswith(prompt) or len(null) == 1:
                ax.hist(list(seen), bins=30, alpha=0.5, density=True, label=name)
        if prompt in thresholds:
            ax.axvline(thresholds[prompt], color="k", linestyle="--",
                       label=f"null 95th pct {thresholds[prompt]:.3f}")
        ax.axvline(post_threshold, color="r", linestyle=":",
                   label=f"post {post_threshold} (self-similarity only)")
        ax.set_title(f"failure score, {prompt}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out_dir: str | Path, summary: pl.DataFrame, *, title: str = "Evaluation",
                 notes: Sequence[str] = (), curves: Mapping[str, pl.DataFrame] | None = None,
                 null: Mapping[str, Sequence[float]] | None = None,
                 thresholds: Mapping[str, float] | None = None,
                 observed: Mapping[str, Sequence[float]] | None = None,
                 items: pl.DataFrame | None = None,
                 tables: Mapping[str, pl.DataFrame] | None = None) -> Path:
    """Write `report.md`, `summary.csv` (and `items.parquet`, `<name>.csv` for each of `tables`)
    and the plots; returns report.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = [
        ("Scores by method (95% intervals)", plot_scores(summary, out / "scores.png")),
        ("Score vs scale", plot_scale_curves(curves or {}, out / "scale_curves.png")),
        ("Null distribution of the failure score",
         plot_null(null or {}, thresholds or {}, observed, out / "null_hist.png")),
    ]
    summary.write_csv(out / "summary.csv")
    if items is not None and items.height:
        items.write_parquet(out / "items.parquet")
    for name, table in (tables or {}).items():
        if table.height:
            table.write_csv(out / f"{name}.csv")
    lines = [f"# {title}", ""]
    lines += [f"- {note}" for note in notes]
    lines += ["", "```", pivot_text(summary), "```", "", "## All rows", "",
              markdown_table(summary), ""]
    for caption, image in images:
        if image is not None:
            lines += [f"## {caption}", "", f"![{caption}]({image.name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
