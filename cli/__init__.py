"""The `selfexplain` command line, above `flows/`: one module per subcommand.

Each subcommand module defines `register(subparsers)` and sets `handler`; a handler parses its
flags into the request and calls one flow or one core function, nothing else. Modules import
heavy libraries (torch, transformers, sae-lens, prefect, duckdb) inside their handler so that
`selfexplain --help` and a bad flag answer fast. `cli.cli` discovers the modules and turns our
errors into one line on stderr.
"""
