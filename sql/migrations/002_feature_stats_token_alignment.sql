-- SAE health (issue 13): for single-token features, the cosine between the decoder row and the
-- top token's mean-free residual direction; NULL for other features.
ALTER TABLE feature_stats ADD COLUMN IF NOT EXISTS token_alignment DOUBLE;
