-- One row per SAE known to the warehouse: from the sae-lens registry, the inbox folder, or a run.
-- Removal is soft: `removed_at` is set when a source stops listing it, cleared when it returns.
CREATE TABLE IF NOT EXISTS sae (
    release         VARCHAR NOT NULL,
    sae_id          VARCHAR NOT NULL,
    source          VARCHAR NOT NULL,      -- registry | inbox | local | default | file
    model_id        VARCHAR,               -- the model the SAE was trained on, when known
    hook_name       VARCHAR,
    resid_layer     INTEGER,               -- the block whose input residual the SAE reads
    d_sae           INTEGER,
    d_model         INTEGER,
    path            VARCHAR,               -- folder or file for local SAEs; hub path for registry ones
    neuronpedia_id  VARCHAR,
    first_seen      TIMESTAMPTZ NOT NULL,
    last_seen       TIMESTAMPTZ NOT NULL,
    removed_at      TIMESTAMPTZ,
    PRIMARY KEY (release, sae_id)
);
