"""``python -m herder.runtime`` runs the ``herder`` command line."""

import sys

from herder.runtime._cli import main

sys.exit(main())
