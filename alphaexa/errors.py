"""Errors that the CLI reports as one line (exit status 2) instead of a traceback."""
from backends.errors import BackendError
from topology.modelcfg import ConfigError


class UserError(Exception):
    """Bad input from the user (a missing file, a layout that does not fit, ...)."""


ONE_LINE_ERRORS = (UserError, ConfigError, BackendError)
