"""Sub-commands of the ``moeroute`` CLI, one module each."""
