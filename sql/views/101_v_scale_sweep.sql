-- One row per (SAE feature, run, prompt, scale): the metric sweep; `is_current` marks the sweep
-- of the run whose label is current.
CREATE OR REPLACE VIEW v_scale_sweep AS
SELECT
    m.release,
    m.sae_id,
    m.feature,
    m.prompt,
    m.scale,
    m.selfsim,
    m.entropy,
    m.crossent,
    m.composite,
    m.run_id,
    (c.run_id IS NOT NULL) AS is_current
FROM scale_metric AS m
LEFT JOIN label_current AS c
  ON c.release = m.release AND c.sae_id = m.sae_id AND c.feature = m.feature AND c.run_id = m.run_id;
