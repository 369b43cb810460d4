import sys

from selfexplain.cli import main

sys.exit(main())
