-- One row per shard of features whose rows are stored; a rerun of the same request skips them.
CREATE TABLE IF NOT EXISTS shard_done (
    request_hash  VARCHAR NOT NULL,
    shard_key     VARCHAR NOT NULL,        -- `<first>-<last>-<hash of the feature list>`
    run_id        VARCHAR NOT NULL,
    release       VARCHAR NOT NULL,
    sae_id        VARCHAR NOT NULL,
    features      INTEGER[] NOT NULL,
    n_features    INTEGER NOT NULL,
    n_labelled    INTEGER NOT NULL,
    n_failed      INTEGER NOT NULL,
    n_skipped     INTEGER NOT NULL,
    seconds       DOUBLE,
    done_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (request_hash, shard_key)
);
