"""``python -m moeroute`` is the ``moeroute`` command."""

import sys

from moeroute.experiments.cli import main

sys.exit(main())
