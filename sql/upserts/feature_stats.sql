INSERT INTO feature_stats (release, sae_id, feature, density, mean_activation, max_activation,
  top_tokens, top_token_share, single_token, vocabproj_tokens, top_contexts, token_alignment, computed_at)
SELECT release, sae_id, feature, density, mean_activation, max_activation, top_tokens,
  top_token_share, single_token, vocabproj_tokens, top_contexts, token_alignment, computed_at FROM incoming
ON CONFLICT (release, sae_id, feature) DO UPDATE SET density = excluded.density,
  mean_activation = excluded.mean_activation, max_activation = excluded.max_activation,
  top_tokens = excluded.top_tokens, top_token_share = excluded.top_token_share,
  single_token = excluded.single_token, vocabproj_tokens = excluded.vocabproj_tokens,
  top_contexts = excluded.top_contexts, token_alignment = excluded.token_alignment, computed_at = excluded.computed_at;
