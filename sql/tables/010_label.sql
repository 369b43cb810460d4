-- One row per (SAE feature, run): every label ever produced (history). The current one is in
-- label_current.
CREATE TABLE IF NOT EXISTS label (
    release             VARCHAR NOT NULL,
    sae_id              VARCHAR NOT NULL,
    feature             INTEGER NOT NULL,
    run_id              VARCHAR NOT NULL,
    label               VARCHAR,           -- NULL when the feature was skipped
    top_labels          VARCHAR[],         -- the top-n explanations, best first
    recovered_token     VARCHAR,
    recovered_reliable  BOOLEAN,
    scale               DOUBLE,            -- scale of the chosen explanation
    composite           DOUBLE,
    score               DOUBLE,
    max_selfsim         DOUBLE,
    max_selfsim_repeat  DOUBLE,
    max_roundtrip       DOUBLE,            -- best round trip of a meaning candidate
    failed              BOOLEAN NOT NULL,
    failure_reason      VARCHAR,
    skipped             BOOLEAN NOT NULL DEFAULT false,  -- not explained (NaN or zero decoder row)
    model_id            VARCHAR,
    model_revision      VARCHAR,
    preset              VARCHAR,
    settings_hash       VARCHAR,
    seconds             DOUBLE,
    labelled_at         TIMESTAMPTZ NOT NULL,
    -- set when the label was carried over from a matched feature of another SAE (migration 003):
    -- the source SAE and feature, and the decoder cosine of the match; the label is provisional
    carried_from_release VARCHAR,
    carried_from_sae_id  VARCHAR,
    carried_from_feature INTEGER,
    carried_cosine       DOUBLE,
    PRIMARY KEY (release, sae_id, feature, run_id)
);
