"""``python -m dagserve``: the same as the ``dagserve`` command."""

import sys

from dagserve.engine.cli import main

sys.exit(main())
