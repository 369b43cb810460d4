INSERT INTO sae_change (release, sae_id, change, source, observed_at, matched)
SELECT release, sae_id, change, source, observed_at, matched
FROM incoming
ON CONFLICT (release, sae_id, change, observed_at) DO UPDATE SET
    source = excluded.source,
    matched = excluded.matched;
