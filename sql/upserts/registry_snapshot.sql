INSERT INTO registry_snapshot (snapshot_sha, sae_lens_version, n_releases, n_saes, first_seen,
                               last_seen)
SELECT snapshot_sha, sae_lens_version, n_releases, n_saes, first_seen, last_seen
FROM incoming
ON CONFLICT (snapshot_sha) DO UPDATE SET
    sae_lens_version = excluded.sae_lens_version,
    first_seen = least(registry_snapshot.first_seen, excluded.first_seen),
    last_seen = greatest(registry_snapshot.last_seen, excluded.last_seen);
