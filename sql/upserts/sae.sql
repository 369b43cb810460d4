-- Keep the first source and first_seen; fill in what is newly known; removal follows the latest.
INSERT INTO sae (release, sae_id, source, model_id, hook_name, resid_layer, d_sae, d_model, path,
                 neuronpedia_id, first_seen, last_seen, removed_at)
SELECT release, sae_id, source, model_id, hook_name, resid_layer, d_sae, d_model, path,
       neuronpedia_id, first_seen, last_seen, removed_at
FROM incoming
ON CONFLICT (release, sae_id) DO UPDATE SET
    model_id = coalesce(excluded.model_id, sae.model_id),
    hook_name = coalesce(excluded.hook_name, sae.hook_name),
    resid_layer = coalesce(excluded.resid_layer, sae.resid_layer),
    d_sae = coalesce(excluded.d_sae, sae.d_sae),
    d_model = coalesce(excluded.d_model, sae.d_model),
    path = coalesce(excluded.path, sae.path),
    neuronpedia_id = coalesce(excluded.neuronpedia_id, sae.neuronpedia_id),
    first_seen = least(sae.first_seen, excluded.first_seen),
    last_seen = greatest(sae.last_seen, excluded.last_seen),
    removed_at = excluded.removed_at;
