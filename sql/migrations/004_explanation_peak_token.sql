-- Token recovery by the round trip's peak (issue 13): the token of each answer that reads back
-- closest to the direction; NULL for answers stored before it.
ALTER TABLE explanation ADD COLUMN IF NOT EXISTS peak_token VARCHAR;
