"""What the feature browser reads from the warehouse: parameterised queries over the public views.

Every value from a request goes in as a query parameter; the only text spliced into SQL is a sort
column and direction chosen from `SORTS` (a fixed whitelist), never the request's own string.
Each function takes an open (read-only) `Warehouse` and returns plain dicts and lists, which the
HTML pages and the JSON API both render.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from selfexplain.warehouse import Warehouse

SORTS = {
    "feature": "feature",
    "label": "label",
    "roundtrip": "max_roundtrip",
    "density": "density",
    "scale": "scale",
    "detection": "detection_auroc",
    "detection_hard": "detection_auroc_hard",
}
"""Sortable columns of the feature table: request name -> column of v_feature_labels."""
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


@dataclass(frozen=True)
class FeatureFilter:
    """The feature table's search, filters, order and page (validated by the app)."""

    q: str = ""
    """Case-insensitive substring of the label (or of a top label)."""
    flagged: bool | None = None
    rt_min: float | None = None
    rt_max: float | None = None
    density_min: float | None = None
    density_max: float | None = None
    det_min: float | None = None
    """Lowest held-out detection AUROC (random negatives) shown; unscored labels drop out."""
    det_max: float | None = None
    sort: str = "feature"
    desc: bool = False
    page: int = 1
    size: int = PAGE_SIZE


_SAES = (
    "SELECT s.release, s.sae_id, s.model_id, s.hook_name, s.d_sae, s.n_labelled, s.n_failed, "
    "s.last_labelled_at, r.run_id AS last_run, r.status AS last_status "
    "FROM v_saes AS s LEFT JOIN (SELECT release, sae_id, run_id, status, "
    "row_number() OVER (PARTITION BY release, sae_id ORDER BY started_at DESC) AS k "
    "FROM v_runs) AS r ON r.release = s.release AND r.sae_id = s.sae_id AND r.k = 1 "
    "WHERE NOT s.removed AND s.n_labelled > 0"
)


def saes(wh: Warehouse) -> list[dict]:
    """Every SAE with labels: counts of labelled and flagged features and its last run."""
    return wh.query(_SAES + " ORDER BY s.release, s.sae_id").to_dicts()


def sae(wh: Warehouse, release: str, sae_id: str) -> dict | None:
    """One SAE's row of `saes` (the filter reaches the view's aggregate: one SAE is counted)."""
    rows = wh.query(_SAES + " AND s.release = ? AND s.sae_id = ?", [release, sae_id]).to_dicts()
    return rows[0] if rows else None


def features(wh: Warehouse, release: str, sae_id: str, filt: FeatureFilter) -> tuple[list[dict], int]:
    """One page of the feature table and the number of matching features."""
    where = ["release = ?", "sae_id = ?", "NOT skipped"]
    params: list[object] = [release, sae_id]
    if filt.q:
        where.append("contains(lower(coalesce(label, '') || chr(10) || "
                     "array_to_string(coalesce(top_labels, []), chr(10))), ?)")
        params.append(filt.q.lower())
    if filt.flagged is not None:
        where.append("failed = ?")
        params.append(filt.flagged)
    for column, low, high in (("max_roundtrip", filt.rt_min, filt.rt_max),
                              ("density", filt.density_min, filt.density_max),
                              ("detection_auroc", filt.det_min, filt.det_max)):
        if low is not None:
            where.append(f"{column} >= ?")
            params.append(low)
        if high is not None:
            where.append(f"{column} <= ?")
            params.append(high)
    condition = " AND ".join(where)
    order = SORTS[filt.sort] + (" DESC" if filt.desc else " ASC") + " NULLS LAST, feature ASC"
    page = wh.query(  # one scan: the page and the number of matches (a window over all of them)
        "SELECT feature, label, top_labels, recovered_token, scale, max_roundtrip, failed, "
        f"density, single_token, top_tokens, detection_auroc, detection_auroc_hard, "
        f"count(*) OVER () AS n_matching "
        f"FROM v_feature_labels WHERE {condition} ORDER BY {order} LIMIT ? OFFSET ?",
        [*params, filt.size, (filt.page - 1) * filt.size])
    rows = page.drop("n_matching").to_dicts()
    if page.height:
        return rows, int(page["n_matching"][0])
    total = wh.query(f"SELECT count(*) AS n FROM v_feature_labels WHERE {condition}", params)
    return rows, int(total["n"][0])  # a page past the end: still say how many match


_CONTEXT = re.compile(r"^(.*?)«(.*?)»(.*)$", re.S)


def split_context(text: str) -> tuple[str, str, str]:
    """`before «token» after` -> (before, token, after); no mark: (text, "", "")."""
    match = _CONTEXT.match(text)
    return match.groups() if match else (text, "", "")  # type: ignore[return-value]


def feature(wh: Warehouse, release: str, sae_id: str, index: int) -> dict | None:
    """Everything the feature page shows, or None when the feature has no label here."""
    label = wh.query("SELECT * FROM v_feature_labels WHERE release = ? AND sae_id = ? "
                     "AND feature = ?", [release, sae_id, index]).to_dicts()
    if not label:
        return None
    candidates = wh.query(
        "SELECT prompt, rank, chosen, text, scale, sample, composite, roundtrip, agreement "
        "FROM v_explanations WHERE release = ? AND sae_id = ? AND feature = ? "
        "ORDER BY prompt, rank", [release, sae_id, index]).to_dicts()
    sweep = wh.query(
        "SELECT prompt, scale, selfsim, entropy, crossent, composite FROM v_scale_sweep "
        "WHERE release = ? AND sae_id = ? AND feature = ? AND is_current ORDER BY prompt, scale",
        [release, sae_id, index]).to_dicts()
    stats = wh.query(
        "SELECT density, mean_activation, max_activation, top_tokens, top_token_share, "
        "single_token, vocabproj_tokens, top_contexts, token_alignment FROM feature_stats "
        "WHERE release = ? AND sae_id = ? AND feature = ?", [release, sae_id, index]).to_dicts()
    history = wh.query(
        "SELECT l.run_id, l.labelled_at, l.label, l.recovered_token, l.max_roundtrip, l.failed, "
        "l.preset, l.settings_hash FROM label AS l WHERE l.release = ? AND l.sae_id = ? "
        "AND l.feature = ? ORDER BY l.labelled_at DESC", [release, sae_id, index]).to_dicts()
    info = stats[0] if stats else None
    contexts = []
    if info:
        top = max((c["activation"] for c in info["top_contexts"] or []), default=0.0) or 1.0
        for item in info["top_contexts"] or []:
            before, token, after = split_context(item["text"])
            contexts.append(dict(before=before, token=token, after=after,
                                 activation=item["activation"],
                                 shade=round(max(0.0, min(1.0, item["activation"] / top)), 3)))
    return dict(label=label[0], candidates=candidates, sweep=sweep, stats=info,
                contexts=contexts, history=history)


def evaluations(wh: Warehouse) -> list[dict]:
    """The latest evaluation of each suite (and SAE or planted set): every method and metric."""
    return wh.query(
        "SELECT eval_id, suite, release, sae_id, method, metric, n, mean, ci_low, ci_high, "
        "created_at FROM v_eval_summary WHERE is_latest "
        "ORDER BY suite, release, sae_id, metric, mean DESC NULLS LAST, method").to_dicts()


def jsonable(value: object) -> object:
    """Rows -> JSON: timestamps as ISO strings, everything else as is."""
    return json.loads(json.dumps(value, default=str))
