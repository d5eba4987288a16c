"""``python -m odistill.cli`` is the ``odistill`` command."""

import sys

from . import main

sys.exit(main())
