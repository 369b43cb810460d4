-- One row per (feature of an SAE, nearest feature of another SAE of the same model and hook, rank):
-- the k nearest decoder rows by cosine (selfexplain.carryover). `mutual`: each is the other's
-- nearest; `matched`: mutual and cosine >= the threshold in force when it was computed, i.e. the
-- pairs a label may be carried across.
CREATE TABLE IF NOT EXISTS feature_match (
    release         VARCHAR NOT NULL,
    sae_id          VARCHAR NOT NULL,
    feature         INTEGER NOT NULL,
    source_release  VARCHAR NOT NULL,
    source_sae_id   VARCHAR NOT NULL,
    rank            INTEGER NOT NULL,     -- 1 = the nearest
    source_feature  INTEGER NOT NULL,
    cosine          DOUBLE NOT NULL,
    mutual          BOOLEAN NOT NULL,
    matched         BOOLEAN NOT NULL,
    threshold       DOUBLE NOT NULL,
    matched_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (release, sae_id, feature, source_release, source_sae_id, rank)
);
