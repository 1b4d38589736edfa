"""``python -m planner.cli ...`` is ``plan ...``."""

import sys

from planner.cli.app import main

sys.exit(main())
