-- One row per SAE feature: its activation statistics over held-out text (selfexplain.stats).
-- density: fraction of held-out tokens where the feature is active; mean_activation: mean over
-- those tokens; top_token_share: share of the activation mass on the top token; single_token:
-- top_token_share >= 0.5 over at least 5 firings; top_contexts: up to 20 windows, token «marked»;
-- token_alignment: single-token features only, cosine of the decoder row with the top token's
-- mean-free residual direction (migration 002).
CREATE TABLE IF NOT EXISTS feature_stats (
    release           VARCHAR NOT NULL,
    sae_id            VARCHAR NOT NULL,
    feature           INTEGER NOT NULL,
    density           DOUBLE NOT NULL,
    mean_activation   DOUBLE NOT NULL,
    max_activation    DOUBLE NOT NULL,
    top_tokens        VARCHAR[] NOT NULL,
    top_token_share   DOUBLE NOT NULL,
    single_token      BOOLEAN NOT NULL,
    vocabproj_tokens  VARCHAR[] NOT NULL,
    top_contexts      STRUCT(text VARCHAR, activation DOUBLE)[] NOT NULL,
    token_alignment   DOUBLE,
    computed_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (release, sae_id, feature)
);
