-- One row per sampled explanation of the current run of each SAE feature, best first.
CREATE OR REPLACE VIEW v_explanations AS
SELECT
    e.release,
    e.sae_id,
    e.feature,
    e.prompt,
    e.rank,
    e.chosen,
    e.text,
    e.scale,
    e.sample,
    e.composite,
    e.score,
    e.extra_json,
    e.peak_token,
    e.run_id,
    TRY_CAST(json_extract_string(e.extra_json, '$.roundtrip') AS DOUBLE) AS roundtrip,
    TRY_CAST(json_extract_string(e.extra_json, '$.agreement') AS DOUBLE) AS agreement
FROM explanation AS e
JOIN label_current AS c
  ON c.release = e.release AND c.sae_id = e.sae_id AND c.feature = e.feature AND c.run_id = e.run_id;
