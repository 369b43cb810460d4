INSERT INTO layer_threshold (model_id, model_revision, layer, settings_hash, prompt, threshold,
                             quantile, n_null, null_mean, null_std, computed_at)
SELECT model_id, model_revision, layer, settings_hash, prompt, threshold, quantile, n_null,
       null_mean, null_std, computed_at
FROM incoming
ON CONFLICT (model_id, model_revision, layer, settings_hash, prompt) DO UPDATE SET
    threshold = excluded.threshold,
    quantile = excluded.quantile,
    n_null = excluded.n_null,
    null_mean = excluded.null_mean,
    null_std = excluded.null_std,
    computed_at = excluded.computed_at;
