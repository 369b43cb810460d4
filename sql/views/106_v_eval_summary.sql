-- One row per (evaluation, suite, release, SAE or planted set, method, metric): the count of
-- measured values (NULL and NaN are not measurements), their mean and, when every value is 0 or 1,
-- the 95% Wilson interval of the proportion (the same formula as evaluation/stats.py `wilson`;
-- NULL for other metrics). `created_at` is the evaluation's newest row; `eval_rank` numbers the
-- evaluations of one (suite, release, sae_id) newest first, and `is_latest` marks rank 1.
CREATE OR REPLACE VIEW v_eval_summary AS
WITH measured AS (
    SELECT eval_id, suite, release, sae_id, method, metric, model_id, settings_hash,
           CASE WHEN isnan(value) THEN NULL ELSE value END AS value
    FROM eval_result
),
evals AS (
    SELECT eval_id, max(created_at) AS created_at
    FROM eval_result
    GROUP BY eval_id
),
grouped AS (
    SELECT eval_id, suite, release, sae_id, method, metric,
           count(value) AS n,
           avg(value) AS mean,
           bool_and(value IN (0.0, 1.0)) FILTER (WHERE value IS NOT NULL) AS is_binary,
           max(model_id) AS model_id,              -- one value per group (per eval and method)
           max(settings_hash) AS settings_hash
    FROM measured
    GROUP BY eval_id, suite, release, sae_id, method, metric
),
wilson AS (
    SELECT g.*,
           1.959963984540054 AS z,
           1 + 1.959963984540054 * 1.959963984540054 / g.n AS denom
    FROM grouped AS g
)
SELECT
    w.eval_id,
    w.suite,
    w.release,
    w.sae_id,
    w.method,
    w.metric,
    w.n,
    w.mean,
    CASE WHEN w.is_binary AND w.n > 0 THEN greatest(0.0,
        (w.mean + w.z * w.z / (2 * w.n)) / w.denom
        - w.z * sqrt(w.mean * (1 - w.mean) / w.n + w.z * w.z / (4 * w.n * w.n)) / w.denom)
    END AS ci_low,
    CASE WHEN w.is_binary AND w.n > 0 THEN least(1.0,
        (w.mean + w.z * w.z / (2 * w.n)) / w.denom
        + w.z * sqrt(w.mean * (1 - w.mean) / w.n + w.z * w.z / (4 * w.n * w.n)) / w.denom)
    END AS ci_high,
    w.model_id,
    w.settings_hash,
    e.created_at,
    dense_rank() OVER (PARTITION BY w.suite, w.release, w.sae_id
                       ORDER BY e.created_at DESC, w.eval_id DESC) AS eval_rank,
    dense_rank() OVER (PARTITION BY w.suite, w.release, w.sae_id
                       ORDER BY e.created_at DESC, w.eval_id DESC) = 1 AS is_latest
FROM wilson AS w
JOIN evals AS e ON e.eval_id = w.eval_id;
