-- One row per matched feature pair across two SAE versions (feature_match, rank 1, matched): the new
-- SAE's current label beside its source feature's current label. status: `carried` (the new label
-- is still the one carried over), `unlabelled` (no label on one side), `same` (fresh label, same
-- text or the same recovered token) or `changed`. `selfexplain diff` adds a semantic agreement.
CREATE OR REPLACE VIEW v_label_changes AS
WITH current AS (
    SELECT l.*
    FROM label_current AS c
    JOIN label AS l
      ON l.release = c.release AND l.sae_id = c.sae_id AND l.feature = c.feature
     AND l.run_id = c.run_id
)
SELECT
    m.release,
    m.sae_id,
    m.feature,
    m.source_release,
    m.source_sae_id,
    m.source_feature,
    m.cosine,
    n.label,
    o.label AS source_label,
    n.recovered_token,
    o.recovered_token AS source_recovered_token,
    (n.carried_from_sae_id IS NOT NULL) AS provisional,
    (lower(trim(n.label)) = lower(trim(o.label))) AS same_text,
    (lower(trim(n.recovered_token)) = lower(trim(o.recovered_token))
        AND trim(n.recovered_token) <> '') AS same_token,
    CASE
        WHEN n.label IS NULL OR o.label IS NULL THEN 'unlabelled'
        WHEN n.carried_from_sae_id IS NOT NULL THEN 'carried'
        WHEN lower(trim(n.label)) = lower(trim(o.label))
          OR (lower(trim(n.recovered_token)) = lower(trim(o.recovered_token))
              AND trim(n.recovered_token) <> '') THEN 'same'
        ELSE 'changed'
    END AS status,
    n.labelled_at,
    o.labelled_at AS source_labelled_at
FROM feature_match AS m
LEFT JOIN current AS n
  ON n.release = m.release AND n.sae_id = m.sae_id AND n.feature = m.feature
LEFT JOIN current AS o
  ON o.release = m.source_release AND o.sae_id = m.source_sae_id AND o.feature = m.source_feature
WHERE m.rank = 1 AND m.matched;
