INSERT INTO feature_match (release, sae_id, feature, source_release, source_sae_id, rank,
                           source_feature, cosine, mutual, matched, threshold, matched_at)
SELECT release, sae_id, feature, source_release, source_sae_id, rank, source_feature, cosine,
       mutual, matched, threshold, matched_at
FROM incoming
ON CONFLICT (release, sae_id, feature, source_release, source_sae_id, rank) DO UPDATE SET
    source_feature = excluded.source_feature,
    cosine = excluded.cosine,
    mutual = excluded.mutual,
    matched = excluded.matched,
    threshold = excluded.threshold,
    matched_at = excluded.matched_at;
