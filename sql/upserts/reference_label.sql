INSERT INTO reference_label (source, release, sae_id, feature, description, model_id, layer,
                             explanation_model, source_file, imported_at)
SELECT source, release, sae_id, feature, description, model_id, layer, explanation_model,
       source_file, imported_at
FROM incoming
ON CONFLICT (source, release, sae_id, feature) DO UPDATE SET
    description = excluded.description,
    model_id = excluded.model_id,
    layer = excluded.layer,
    explanation_model = excluded.explanation_model,
    source_file = excluded.source_file,
    imported_at = excluded.imported_at;
