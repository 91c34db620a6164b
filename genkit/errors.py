"""The one exception type users see for bad input.

A :class:`GenkitError` carries a one-line message that says what went wrong and what
to do about it. Command-line entry points print it as ``error: <message>`` (no
traceback) and exit with status 2.
"""


class GenkitError(Exception):
    """Bad input or a stopped run, explained in one line."""
