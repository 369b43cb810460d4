-- One row per SAE feature: its current label. The first twelve columns are the public contract;
-- the activation statistics (feature_stats, when computed) follow, e.g. to flag single-token
-- features, which self-explanation tends to explain as that token. `provisional`: the label was
-- carried over from a matched feature of another SAE version (carried_from_*), not produced for
-- this feature; a fresh relabel replaces it. `detection_auroc` / `detection_auroc_hard`: the label's
-- held-out detection score (label_score, embedding scorer), NULL until scored.
CREATE OR REPLACE VIEW v_feature_labels AS
SELECT
    l.release,
    l.sae_id,
    l.feature,
    l.label,
    l.recovered_token,
    l.scale,
    l.composite,
    l.max_selfsim,
    l.failed,
    l.failure_reason,
    l.run_id,
    l.labelled_at,
    l.top_labels,
    l.recovered_reliable,
    l.score,
    l.max_selfsim_repeat,
    l.max_roundtrip,
    l.skipped,
    l.model_id,
    l.model_revision,
    l.preset,
    l.settings_hash,
    s.hook_name,
    s.resid_layer,
    fs.single_token,
    fs.density,
    fs.top_tokens,
    fs.token_alignment,
    (l.carried_from_sae_id IS NOT NULL) AS provisional,
    l.carried_from_release,
    l.carried_from_sae_id,
    l.carried_from_feature,
    l.carried_cosine,
    sc.detection_auroc,
    sc.detection_auroc_hard
FROM label_current AS c
JOIN label AS l
  ON l.release = c.release AND l.sae_id = c.sae_id AND l.feature = c.feature AND l.run_id = c.run_id
LEFT JOIN sae AS s
  ON s.release = l.release AND s.sae_id = l.sae_id
LEFT JOIN feature_stats AS fs
  ON fs.release = l.release AND fs.sae_id = l.sae_id AND fs.feature = l.feature
LEFT JOIN label_score AS sc
  ON sc.release = l.release AND sc.sae_id = l.sae_id AND sc.feature = l.feature
 AND sc.run_id = l.run_id AND sc.scorer = 'embedding';
