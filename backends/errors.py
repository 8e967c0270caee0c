"""Errors raised by the backend layer for bad input or environment (torch-free)."""


class BackendError(RuntimeError):
    """A bad backend name, launcher variable or device request; the message names the culprit."""
