-- Where a feature of one SAE has two or more labels with a held-out detection score (fresh and
-- carried, or two runs) and its current label is one of them, the best-scored label becomes
-- current (ties: the latest); every label stays in `label` (the history). Parameters: release,
-- sae_id. Labels without a score change nothing.
UPDATE label_current AS c
SET run_id = best.run_id, labelled_at = best.labelled_at
FROM (
    SELECT release, sae_id, feature, run_id, labelled_at
    FROM (
        SELECT l.release, l.sae_id, l.feature, l.run_id, l.labelled_at,
               row_number() OVER (PARTITION BY l.release, l.sae_id, l.feature
                                  ORDER BY sc.detection_auroc DESC, l.labelled_at DESC,
                                           l.run_id DESC) AS k,
               count(*) OVER (PARTITION BY l.release, l.sae_id, l.feature) AS n
        FROM label AS l
        JOIN label_score AS sc
          ON sc.release = l.release AND sc.sae_id = l.sae_id AND sc.feature = l.feature
         AND sc.run_id = l.run_id AND sc.scorer = 'embedding'
        WHERE l.release = ? AND l.sae_id = ? AND sc.detection_auroc IS NOT NULL
          AND NOT coalesce(l.skipped, false) AND l.label IS NOT NULL
    )
    WHERE k = 1 AND n >= 2
) AS best
WHERE c.release = best.release AND c.sae_id = best.sae_id AND c.feature = best.feature
  AND c.run_id <> best.run_id
  AND EXISTS (SELECT 1 FROM label_score AS cur
              WHERE cur.release = c.release AND cur.sae_id = c.sae_id AND cur.feature = c.feature
                AND cur.run_id = c.run_id AND cur.scorer = 'embedding'
                AND cur.detection_auroc IS NOT NULL);
