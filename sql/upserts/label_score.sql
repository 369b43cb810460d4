INSERT INTO label_score (release, sae_id, feature, run_id, scorer, label, detection_auroc,
                         detection_auroc_hard, n_activating, n_random, n_hard, stats_dir, scored_at)
SELECT release, sae_id, feature, run_id, scorer, label, detection_auroc, detection_auroc_hard,
       n_activating, n_random, n_hard, stats_dir, scored_at
FROM incoming
ON CONFLICT (release, sae_id, feature, run_id, scorer) DO UPDATE SET
    label = excluded.label,
    detection_auroc = excluded.detection_auroc,
    detection_auroc_hard = excluded.detection_auroc_hard,
    n_activating = excluded.n_activating,
    n_random = excluded.n_random,
    n_hard = excluded.n_hard,
    stats_dir = excluded.stats_dir,
    scored_at = excluded.scored_at;
