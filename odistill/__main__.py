"""``python -m odistill`` runs the ``odistill`` command."""

import sys

from .cli import main

sys.exit(main())
