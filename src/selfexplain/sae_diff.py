"""Two versions of an SAE side by side (`selfexplain diff`): which features of B are A's
(mutual nearest decoder rows), which are new, which vanished, and with a warehouse whether the
labels of matched features agree."""

from __future__ import annotations

from typing import NamedTuple


class SaeDiff(NamedTuple):
    """What `diff_saes` found."""

    summary: dict[str, object]
    """Counts and names: a, b, a_features, b_features, threshold, matched, new, vanished,
    matched_cosine_median and, with labels on both sides, labelled/carried/fresh pairs, agree,
    agreement_by_cosine."""
    pairs: object
    """Matched pairs (polars: feature, source_feature, cosine)."""
    fresh: object | None
    """Pairs labelled afresh on both sides, with similarity and agree (None: no labels)."""


def diff_saes(sae_a: str, sae_b: str, *, warehouse: str | None = None,
              threshold: float, record_matches: bool = False) -> SaeDiff:
    """Match SAE B's features against SAE A's (decoder cosine >= threshold, mutual nearest);
    with `warehouse`, compare the labels of matched features (and store the matches when
    `record_matches`)."""
    import polars as pl

    from selfexplain.carryover import check_threshold, match_features
    from selfexplain.warehouse import check_duckdb_file

    check_threshold(threshold)
    if warehouse:
        check_duckdb_file(warehouse)
    release_a, sae_id_a, decoder_a = resolve(sae_a, warehouse)
    release_b, sae_id_b, decoder_b = resolve(sae_b, warehouse)
    matches = match_features(decoder_b, decoder_a, threshold=threshold, k=1)
    pairs = (matches.frame().filter(pl.col("matched"))
             .select("feature", "source_feature", "cosine"))
    counts = matches.summary()
    out: dict[str, object] = {
        "a": f"{release_a}/{sae_id_a}", "b": f"{release_b}/{sae_id_b}",
        "a_features": int(decoder_a.shape[0]), "b_features": int(decoder_b.shape[0]),
        "threshold": threshold, **counts,
        "matched_cosine_median": round(float(pairs["cosine"].median()), 3) if pairs.height else None,
    }
    fresh = None
    if warehouse:
        if record_matches:
            record(warehouse, matches, (release_a, sae_id_a), (release_b, sae_id_b))
        labelled = label_pairs(warehouse, pairs, (release_a, sae_id_a), (release_b, sae_id_b))
        if labelled is not None:
            fresh = agreement(labelled)
            out["labelled_pairs"] = labelled.height
            out["carried_pairs"] = labelled.height - fresh.height
            out["fresh_pairs"] = fresh.height
            out["agree"] = int(fresh["agree"].sum()) if fresh.height else 0
            out["agreement_by_cosine"] = by_cosine(fresh)
    return SaeDiff(out, pairs, fresh)


def resolve(spec: str, warehouse: str | None):
    """(release, sae_id, decoder (n, d)) of an SAE argument."""
    from pathlib import Path

    from selfexplain.carryover import decoder_dir, load_decoder, unit_rows
    from selfexplain.statstore import load_sae

    if warehouse and "/" in spec and not Path(spec).expanduser().exists():
        release, sae_id = spec.split("/", 1)
        stored = load_decoder(decoder_dir(warehouse), release, sae_id)
        if stored is not None:
            return release, sae_id, stored
    sae = load_sae(spec)
    return sae.release, sae.sae_id, unit_rows(sae.decoder)


CURRENT_SQL = """
SELECT feature, label, recovered_token, provisional FROM v_feature_labels
WHERE release = ? AND sae_id = ? AND NOT skipped
"""


def label_pairs(warehouse: str, pairs, a: tuple[str, str], b: tuple[str, str]):
    """Matched pairs joined with both sides' current labels (None when the warehouse has none)."""
    import polars as pl

    from selfexplain.warehouse_read import open_reader

    with open_reader(warehouse) as wh:
        if "v_feature_labels" not in wh.views():
            return None
        old = wh.query(CURRENT_SQL, list(a))
        new = wh.query(CURRENT_SQL, list(b))
    old = old.rename({c: f"{c}_a" for c in old.columns if c != "feature"}).rename(
        {"feature": "source_feature"})
    new = new.rename({c: f"{c}_b" for c in new.columns if c != "feature"})
    return (pairs.join(new, on="feature", how="inner")
            .join(old, on="source_feature", how="inner")
            .with_columns(pl.col("cosine").round(3)))


def agreement(labelled):
    """`labelled` with similarity and agree columns (fresh labels on both sides only)."""
    import polars as pl

    from selfexplain.carryover import label_similarity, labels_agree
    from selfexplain.evaluation.real import Embedder

    fresh = labelled.filter(~pl.col("provisional_a") & ~pl.col("provisional_b"))
    if fresh.height == 0:
        return fresh.with_columns(pl.lit(None, pl.Float64).alias("similarity"),
                                  pl.lit(None, pl.Boolean).alias("agree"))
    similarity = label_similarity(fresh["label_b"].to_list(), fresh["label_a"].to_list(),
                                  Embedder())
    agree = labels_agree(fresh["label_b"].to_list(), fresh["label_a"].to_list(),
                         fresh["recovered_token_b"].to_list(),
                         fresh["recovered_token_a"].to_list(), similarity)
    return fresh.with_columns(pl.Series("similarity", similarity, pl.Float64),
                              pl.Series("agree", agree, pl.Boolean))


def by_cosine(fresh, edges=(0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.01)):
    """Agreement per cosine bin: rows of (bin, n, agree)."""
    import polars as pl

    rows = []
    for low, high in zip(edges, edges[1:]):
        part = fresh.filter((pl.col("cosine") >= low) & (pl.col("cosine") < high))
        if part.height:
            rows.append({"cosine": f"[{low:.2f}, {min(high, 1.0):.2f}]" if high > 1 else
                         f"[{low:.2f}, {high:.2f})", "n": part.height,
                         "agree": round(float(part["agree"].mean()), 3)})
    return rows


def record(warehouse: str, matches, a: tuple[str, str], b: tuple[str, str]) -> None:
    """Store the matches in `feature_match` (so v_label_changes shows the pairs)."""
    from selfexplain.runlock import write_locked
    from selfexplain.warehouse_rows import conform, utc_now

    rows = matches.table_rows(release=b[0], sae_id=b[1], source_release=a[0],
                              source_sae_id=a[1], matched_at=utc_now())
    write_locked(warehouse, {"feature_match": conform("feature_match", rows)})
