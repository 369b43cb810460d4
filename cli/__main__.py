"""`python -m cli`: the same as the `selfexplain` command."""

import sys

from cli.cli import main

sys.exit(main())
