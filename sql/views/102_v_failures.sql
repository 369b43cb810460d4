-- One row per SAE feature whose current label is a likely failure or was skipped, with the
-- evidence: max self-similarity of both prompts and the best round trip of a candidate.
CREATE OR REPLACE VIEW v_failures AS
SELECT
    f.release,
    f.sae_id,
    f.feature,
    CASE WHEN f.skipped THEN 'skipped' ELSE 'failed' END AS kind,
    f.failure_reason,
    f.max_selfsim,
    f.max_selfsim_repeat,
    f.max_roundtrip,
    f.recovered_token,
    f.recovered_reliable,
    f.label,
    f.run_id,
    f.labelled_at
FROM v_feature_labels AS f
WHERE f.failed OR f.skipped;
