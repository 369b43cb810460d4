-- One row per forward migration applied to this warehouse (sql/migrations/NNN_<name>.sql).
-- A fresh warehouse is created at the latest version: every known migration is recorded at once.
CREATE TABLE IF NOT EXISTS schema_version (
    version     INTEGER PRIMARY KEY,
    name        VARCHAR NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
