"""``python -m helpers.train``: see :func:`helpers.train.cli.main`."""

import sys

from helpers.train.cli import main

sys.exit(main())
