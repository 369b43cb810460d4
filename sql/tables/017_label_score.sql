-- One row per (label of a feature in a run, scorer): how well the label detects where its feature
-- fires on held-out text (selfexplain.scoring; the examples `collect` kept from documents disjoint
-- from those that built the typical inputs). `detection_auroc`: activating vs random non-activating
-- examples; `detection_auroc_hard`: vs examples where the nearest latents by decoder cosine fire and
-- this one does not. 0.5 is chance. `stats_dir`: the collect whose examples were used.
CREATE TABLE IF NOT EXISTS label_score (
    release              VARCHAR NOT NULL,
    sae_id               VARCHAR NOT NULL,
    feature              INTEGER NOT NULL,
    run_id               VARCHAR NOT NULL,
    scorer               VARCHAR NOT NULL,     -- 'embedding' (MiniLM similarity)
    label                VARCHAR,
    detection_auroc      DOUBLE,
    detection_auroc_hard DOUBLE,
    n_activating         INTEGER,
    n_random             INTEGER,
    n_hard               INTEGER,
    stats_dir            VARCHAR,
    scored_at            TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (release, sae_id, feature, run_id, scorer)
);
