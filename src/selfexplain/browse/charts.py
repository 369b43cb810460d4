"""The feature page's scale-sweep plot, drawn by matplotlib as inline SVG (no CDN, no JS)."""

from __future__ import annotations

import io


def sweep_svg(sweep: list[dict], chosen_scales: dict[str, list[float]]) -> str:
    """Self-similarity and entropy against scale, one panel per prompt; chosen scales marked.

    `sweep`: rows with prompt, scale, selfsim, entropy, composite (v_scale_sweep).
    `chosen_scales`: prompt -> scales of its chosen explanations (drawn as dotted lines).
    Returns an `<svg>` element (matplotlib escapes its own text), or "" with no rows.
    """
    if not sweep:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    prompts = sorted({row["prompt"] for row in sweep})
    figure = Figure(figsize=(4.2 * len(prompts), 2.8))
    for i, prompt in enumerate(prompts, 1):
        rows = [r for r in sweep if r["prompt"] == prompt]
        scales = [r["scale"] for r in rows]
        axis = figure.add_subplot(1, len(prompts), i)
        for key, colour in (("selfsim", "tab:blue"), ("entropy", "tab:orange"),
                            ("composite", "tab:green")):
            values = [r[key] for r in rows]
            if any(v is not None for v in values):
                axis.plot(scales, [float("nan") if v is None else v for v in values],
                          marker="o", markersize=3, label=key, color=colour)
        for scale in chosen_scales.get(prompt, []):
            axis.axvline(scale, color="grey", linestyle=":", linewidth=1)
        axis.set_title(f"{prompt} prompt", fontsize=9)
        axis.set_xlabel("scale (L2 norm injected)", fontsize=8)
        axis.tick_params(labelsize=7)
        if i == 1:
            axis.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]
