"""Errors that reach the user as one line."""


class SpaError(Exception):
    """A problem with the user's input or arguments: printed as one line, never a traceback."""
