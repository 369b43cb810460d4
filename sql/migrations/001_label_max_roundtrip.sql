-- The round-trip failure metric (issue 9): the best meaning candidate's round-trip cosine.
ALTER TABLE label ADD COLUMN IF NOT EXISTS max_roundtrip DOUBLE;
