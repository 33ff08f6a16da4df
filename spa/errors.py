"""Errors that reach the user as one line."""


class SpaError(Exception):
    """A problem with the user's input or arguments: printed as one line, never a traceback."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type name if it has none)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
