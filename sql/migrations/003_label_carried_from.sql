-- Label carry-over (issue 16): a label copied from a matched feature of another SAE version of the
-- same model and hook keeps its provenance; NULL on labels the engine produced for this feature.
ALTER TABLE label ADD COLUMN IF NOT EXISTS carried_from_release VARCHAR;
ALTER TABLE label ADD COLUMN IF NOT EXISTS carried_from_sae_id VARCHAR;
ALTER TABLE label ADD COLUMN IF NOT EXISTS carried_from_feature INTEGER;
ALTER TABLE label ADD COLUMN IF NOT EXISTS carried_cosine DOUBLE;
