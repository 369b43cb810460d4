-- One row per (feature, run, prompt, metric scale): the sweep of METHOD.md section 6. The repeat
-- prompt may cover only the scales the meaning prompt chose, so rows are keyed by the scale itself.
CREATE TABLE IF NOT EXISTS scale_metric (
    release      VARCHAR NOT NULL,
    sae_id       VARCHAR NOT NULL,
    feature      INTEGER NOT NULL,
    run_id       VARCHAR NOT NULL,
    prompt       VARCHAR NOT NULL,         -- meaning | repeat
    scale        DOUBLE NOT NULL,          -- injected L2 norm
    selfsim      DOUBLE,
    entropy      DOUBLE,
    crossent     DOUBLE,
    composite    DOUBLE,
    PRIMARY KEY (release, sae_id, feature, run_id, prompt, scale)
);
