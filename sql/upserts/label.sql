INSERT INTO label (release, sae_id, feature, run_id, label, top_labels, recovered_token,
                   recovered_reliable, scale, composite, score, max_selfsim, max_selfsim_repeat,
                   max_roundtrip, failed, failure_reason, skipped, model_id, model_revision, preset, settings_hash,
                   seconds, labelled_at)
SELECT release, sae_id, feature, run_id, label, top_labels, recovered_token, recovered_reliable,
       scale, composite, score, max_selfsim, max_selfsim_repeat, max_roundtrip, failed, failure_reason, skipped,
       model_id, model_revision, preset, settings_hash, seconds, labelled_at
FROM incoming
ON CONFLICT (release, sae_id, feature, run_id) DO UPDATE SET
    label = excluded.label,
    top_labels = excluded.top_labels,
    recovered_token = excluded.recovered_token,
    recovered_reliable = excluded.recovered_reliable,
    scale = excluded.scale,
    composite = excluded.composite,
    score = excluded.score,
    max_selfsim = excluded.max_selfsim,
    max_selfsim_repeat = excluded.max_selfsim_repeat,
    max_roundtrip = excluded.max_roundtrip,
    failed = excluded.failed,
    failure_reason = excluded.failure_reason,
    skipped = excluded.skipped,
    model_id = excluded.model_id,
    model_revision = excluded.model_revision,
    preset = excluded.preset,
    settings_hash = excluded.settings_hash,
    seconds = excluded.seconds,
    labelled_at = excluded.labelled_at;
