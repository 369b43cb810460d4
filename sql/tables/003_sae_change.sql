-- One row per observed change of an SAE's presence (the watch_saes flow's history).
CREATE TABLE IF NOT EXISTS sae_change (
    release      VARCHAR NOT NULL,
    sae_id       VARCHAR NOT NULL,
    change       VARCHAR NOT NULL,         -- added | removed | restored | baseline
    source       VARCHAR NOT NULL,         -- registry | inbox
    observed_at  TIMESTAMPTZ NOT NULL,
    matched      BOOLEAN NOT NULL DEFAULT false,  -- matched the watch filter (a relabel was started)
    PRIMARY KEY (release, sae_id, change, observed_at)
);
