-- One row per known SAE with its labelling coverage (current labels only).
CREATE OR REPLACE VIEW v_saes AS
SELECT
    s.release,
    s.sae_id,
    s.source,
    s.model_id,
    s.hook_name,
    s.resid_layer,
    s.d_sae,
    s.path,
    s.neuronpedia_id,
    (s.removed_at IS NOT NULL) AS removed,
    s.first_seen,
    s.last_seen,
    s.removed_at,
    coalesce(c.n_labelled, 0) AS n_labelled,
    coalesce(c.n_failed, 0) AS n_failed,
    c.last_labelled_at
FROM sae AS s
LEFT JOIN (
    SELECT l.release, l.sae_id,
           count(*) FILTER (WHERE NOT l.skipped) AS n_labelled,
           count(*) FILTER (WHERE l.failed) AS n_failed,
           max(l.labelled_at) AS last_labelled_at
    FROM label_current AS cur
    JOIN label AS l
      ON l.release = cur.release AND l.sae_id = cur.sae_id AND l.feature = cur.feature
     AND l.run_id = cur.run_id
    GROUP BY l.release, l.sae_id
) AS c ON c.release = s.release AND c.sae_id = s.sae_id;
