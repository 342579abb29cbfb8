"""``python -m moeroute`` is the ``moeroute`` command."""

import sys

from moeroute.harness.cli import main

sys.exit(main())
