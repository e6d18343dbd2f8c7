"""The base of phf's own errors: the CLI prints them as one line (no traceback) and exits 2."""


class PhfError(Exception):
    """A problem with the user's input or environment, with a message that says what to do."""
