-- One row per (evaluation, item, method, metric) value. An item is an SAE feature or, for planted
-- concepts, a row of a vector set (release = 'planted', sae_id = the set's name).
CREATE TABLE IF NOT EXISTS eval_result (
    eval_id        VARCHAR NOT NULL,       -- one evaluation run
    suite          VARCHAR NOT NULL,       -- planted | token_recovery | embedding | judge | reference
    release        VARCHAR NOT NULL,
    sae_id         VARCHAR NOT NULL,
    feature        INTEGER NOT NULL,
    method         VARCHAR NOT NULL,       -- selfexplain | vocabproj | tokenchange | maxact | ...
    metric         VARCHAR NOT NULL,       -- e.g. hit_top3, similarity, judge_match
    value          DOUBLE,
    name           VARCHAR,                -- human name of the item (the planted word, ...)
    detail_json    VARCHAR,
    model_id       VARCHAR,
    settings_hash  VARCHAR,
    run_id         VARCHAR,                -- the relabel run whose labels were evaluated, if any
    created_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (eval_id, suite, release, sae_id, feature, method, metric)
);
