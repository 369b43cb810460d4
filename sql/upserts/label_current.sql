-- The latest label wins; replaying an older shard (e.g. a late Parquet merge) never demotes it.
-- Equal timestamps are settled by run_id, so the result never depends on the order of batches.
INSERT INTO label_current (release, sae_id, feature, run_id, labelled_at)
SELECT release, sae_id, feature, run_id, labelled_at
FROM incoming
ON CONFLICT (release, sae_id, feature) DO UPDATE SET
    run_id = excluded.run_id,
    labelled_at = excluded.labelled_at
WHERE excluded.labelled_at > label_current.labelled_at
   OR (excluded.labelled_at = label_current.labelled_at AND excluded.run_id >= label_current.run_id);
