-- One row per distinct content of the installed sae-lens pretrained registry.
CREATE TABLE IF NOT EXISTS registry_snapshot (
    snapshot_sha     VARCHAR PRIMARY KEY,  -- sha256 prefix of the sorted (release, sae_id) list
    sae_lens_version VARCHAR,
    n_releases       INTEGER NOT NULL,
    n_saes           INTEGER NOT NULL,
    first_seen       TIMESTAMPTZ NOT NULL,
    last_seen        TIMESTAMPTZ NOT NULL
);
