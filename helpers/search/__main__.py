"""``python -m helpers.search``: see :func:`helpers.search.cli.main`."""

import sys

from helpers.search.cli import main

sys.exit(main())
