-- One row per (feature, run, prompt, metric scale): the sweep of METHOD.md section 6.
CREATE TABLE IF NOT EXISTS scale_metric (
    release      VARCHAR NOT NULL,
    sae_id       VARCHAR NOT NULL,
    feature      INTEGER NOT NULL,
    run_id       VARCHAR NOT NULL,
    prompt       VARCHAR NOT NULL,         -- meaning | repeat
    scale_index  INTEGER NOT NULL,
    scale        DOUBLE NOT NULL,          -- injected L2 norm
    selfsim      DOUBLE,
    entropy      DOUBLE,
    crossent     DOUBLE,
    composite    DOUBLE,
    PRIMARY KEY (release, sae_id, feature, run_id, prompt, scale_index)
);
