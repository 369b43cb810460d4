-- One row per relabel run with its progress: shards stored, labels written, duration.
CREATE OR REPLACE VIEW v_runs AS
SELECT
    r.run_id,
    r.status,
    r.release,
    r.sae_id,
    r.model,
    r.model_id,
    r.model_revision,
    r.preset,
    r.settings_hash,
    r.request_hash,
    r.features,
    r.n_features,
    r.shard_size,
    r.n_shards,
    r.n_shards_skipped,
    coalesce(d.shards_stored, 0) AS shards_stored,
    coalesce(d.features_stored, 0) AS features_stored,
    r.n_labelled,
    r.n_failed,
    r.n_skipped,
    r.error,
    r.started_at,
    r.finished_at,
    date_diff('millisecond', r.started_at, coalesce(r.finished_at, d.last_done_at)) / 1000.0
        AS seconds
FROM run AS r
LEFT JOIN (
    SELECT run_id, count(*) AS shards_stored, sum(n_features) AS features_stored,
           max(done_at) AS last_done_at
    FROM shard_done
    GROUP BY run_id
) AS d ON d.run_id = r.run_id;
