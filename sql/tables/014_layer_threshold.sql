-- One row per (model, layer, settings, prompt): the failure threshold on max self-similarity
-- derived from a null of random unit directions (METHOD.md section 7).
CREATE TABLE IF NOT EXISTS layer_threshold (
    model_id        VARCHAR NOT NULL,
    model_revision  VARCHAR NOT NULL,
    layer           INTEGER NOT NULL,      -- the SAE's residual layer the null was drawn for
    settings_hash   VARCHAR NOT NULL,
    prompt          VARCHAR NOT NULL,      -- meaning | repeat
    threshold       DOUBLE NOT NULL,
    quantile        DOUBLE NOT NULL,       -- e.g. 0.95 of the null's max self-similarity
    n_null          INTEGER NOT NULL,
    null_mean       DOUBLE,
    null_std        DOUBLE,
    computed_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (model_id, model_revision, layer, settings_hash, prompt)
);
