-- One row per relabel run (a Prefect flow run, or a CLI run in ephemeral mode).
CREATE TABLE IF NOT EXISTS run (
    run_id           VARCHAR PRIMARY KEY,
    request_hash     VARCHAR NOT NULL,     -- model + SAE + settings: runs with equal hashes share shards
    model            VARCHAR NOT NULL,     -- the model spec as requested (`default`, a folder, ...)
    model_id         VARCHAR,
    model_revision   VARCHAR,
    release          VARCHAR NOT NULL,
    sae_id           VARCHAR NOT NULL,
    preset           VARCHAR NOT NULL,
    settings_hash    VARCHAR NOT NULL,
    config_json      VARCHAR NOT NULL,
    features         VARCHAR NOT NULL,     -- the feature list as requested, e.g. `0-15`
    n_features       INTEGER NOT NULL,
    shard_size       INTEGER NOT NULL,
    n_shards         INTEGER,
    n_shards_skipped INTEGER,
    n_labelled       INTEGER,
    n_failed         INTEGER,
    n_skipped        INTEGER,
    status           VARCHAR NOT NULL,     -- running | completed | failed | interrupted
    error            VARCHAR,
    started_at       TIMESTAMPTZ NOT NULL,
    finished_at      TIMESTAMPTZ
);
