"""One module per CLI subcommand; each defines `register(subparsers)` and sets `handler`.

Modules import heavy libraries (torch, transformers, sae-lens, prefect) inside their handler so
that `selfexplain --help` stays fast."""
