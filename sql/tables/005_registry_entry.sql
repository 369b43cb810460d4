-- One row per SAE listed in one registry snapshot (stored once per distinct registry content).
CREATE TABLE IF NOT EXISTS registry_entry (
    snapshot_sha    VARCHAR NOT NULL,
    release         VARCHAR NOT NULL,
    sae_id          VARCHAR NOT NULL,
    model_id        VARCHAR,
    repo_id         VARCHAR,
    path            VARCHAR,
    neuronpedia_id  VARCHAR,
    PRIMARY KEY (snapshot_sha, release, sae_id)
);
