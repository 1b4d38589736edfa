"""``python -m planner.cli ...`` is ``plan ...``."""

import sys

from planner.cli.commands import main

sys.exit(main())
