-- One row per imported reference label (e.g. a Neuronpedia auto-interp export) of an SAE feature.
CREATE TABLE IF NOT EXISTS reference_label (
    source             VARCHAR NOT NULL,   -- e.g. neuronpedia
    release            VARCHAR NOT NULL,
    sae_id             VARCHAR NOT NULL,
    feature            INTEGER NOT NULL,
    description        VARCHAR NOT NULL,
    model_id           VARCHAR,            -- Neuronpedia modelId
    layer              VARCHAR,            -- Neuronpedia layer / source id, e.g. 6-res-jb
    explanation_model  VARCHAR,            -- who wrote it, e.g. gpt-3.5-turbo
    source_file        VARCHAR,
    imported_at        TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (source, release, sae_id, feature)
);
