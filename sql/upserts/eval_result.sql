INSERT INTO eval_result (eval_id, suite, release, sae_id, feature, method, metric, value, name,
                         detail_json, model_id, settings_hash, run_id, created_at)
SELECT eval_id, suite, release, sae_id, feature, method, metric, value, name, detail_json,
       model_id, settings_hash, run_id, created_at
FROM incoming
ON CONFLICT (eval_id, suite, release, sae_id, feature, method, metric) DO UPDATE SET
    value = excluded.value,
    name = excluded.name,
    detail_json = excluded.detail_json,
    model_id = excluded.model_id,
    settings_hash = excluded.settings_hash,
    run_id = excluded.run_id,
    created_at = excluded.created_at;
