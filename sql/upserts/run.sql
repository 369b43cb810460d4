-- A run row is written when the run starts and again when it ends: later facts win, known facts
-- are never erased by a row that does not know them.
INSERT INTO run (run_id, request_hash, model, model_id, model_revision, release, sae_id, preset,
                 settings_hash, config_json, features, n_features, shard_size, n_shards,
                 n_shards_skipped, n_labelled, n_failed, n_skipped, status, error, started_at,
                 finished_at)
SELECT run_id, request_hash, model, model_id, model_revision, release, sae_id, preset,
       settings_hash, config_json, features, n_features, shard_size, n_shards,
       n_shards_skipped, n_labelled, n_failed, n_skipped, status, error, started_at, finished_at
FROM incoming
ON CONFLICT (run_id) DO UPDATE SET
    model_id = coalesce(excluded.model_id, run.model_id),
    model_revision = coalesce(excluded.model_revision, run.model_revision),
    n_shards = coalesce(excluded.n_shards, run.n_shards),
    n_shards_skipped = coalesce(excluded.n_shards_skipped, run.n_shards_skipped),
    n_labelled = coalesce(excluded.n_labelled, run.n_labelled),
    n_failed = coalesce(excluded.n_failed, run.n_failed),
    n_skipped = coalesce(excluded.n_skipped, run.n_skipped),
    status = excluded.status,
    error = excluded.error,
    started_at = least(run.started_at, excluded.started_at),
    finished_at = coalesce(excluded.finished_at, run.finished_at);
