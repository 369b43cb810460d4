-- One row per sampled explanation (candidate) of a feature in a run, both prompts, every score.
CREATE TABLE IF NOT EXISTS explanation (
    release     VARCHAR NOT NULL,
    sae_id      VARCHAR NOT NULL,
    feature     INTEGER NOT NULL,
    run_id      VARCHAR NOT NULL,
    candidate   INTEGER NOT NULL,          -- position in the engine's candidate list
    prompt      VARCHAR NOT NULL,          -- meaning | repeat
    text        VARCHAR NOT NULL,
    scale       DOUBLE NOT NULL,
    sample      INTEGER NOT NULL,
    composite   DOUBLE,
    score       DOUBLE,
    rank        INTEGER NOT NULL,          -- 0 = best among this prompt's candidates
    chosen      BOOLEAN NOT NULL,          -- among the top_n shown as the label
    extra_json  VARCHAR,                   -- strategy-specific scores, e.g. {"agreement": 0.4}
    peak_token  VARCHAR,                   -- the answer's token where the round trip peaks
    PRIMARY KEY (release, sae_id, feature, run_id, candidate)
);
