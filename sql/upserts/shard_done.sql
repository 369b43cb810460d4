INSERT INTO shard_done (request_hash, shard_key, run_id, release, sae_id, features, n_features,
                        n_labelled, n_failed, n_skipped, seconds, done_at)
SELECT request_hash, shard_key, run_id, release, sae_id, features, n_features, n_labelled,
       n_failed, n_skipped, seconds, done_at
FROM incoming
ON CONFLICT (request_hash, shard_key) DO UPDATE SET
    run_id = excluded.run_id,
    features = excluded.features,
    n_features = excluded.n_features,
    n_labelled = excluded.n_labelled,
    n_failed = excluded.n_failed,
    n_skipped = excluded.n_skipped,
    seconds = excluded.seconds,
    done_at = excluded.done_at;
