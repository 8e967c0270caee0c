"""Subcommands of the ``alphaexa`` CLI, one module each (discovered by ``alphaexa.cli``)."""
