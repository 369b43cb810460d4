-- One row per SAE feature: which run's label is current (the latest labelled_at wins).
CREATE TABLE IF NOT EXISTS label_current (
    release      VARCHAR NOT NULL,
    sae_id       VARCHAR NOT NULL,
    feature      INTEGER NOT NULL,
    run_id       VARCHAR NOT NULL,
    labelled_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (release, sae_id, feature)
);
