"""Names of the warehouse files, in a module that imports nothing: the CLI reads them while it
builds its parser, before duckdb or polars load."""

DEFAULT_WAREHOUSE = "warehouse.duckdb"
"""The warehouse every command reads and writes unless `--warehouse` names another file."""
MEMORY = ":memory:"
"""DuckDB's in-memory database: a warehouse that lives and dies with its process."""
