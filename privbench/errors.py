"""Errors a user can cause: the CLI prints them as one line and exits with code 2."""


class PrivbenchError(Exception):
    """A problem with the user's input (name, option, data, folder), not a bug in privbench."""


class NonFiniteError(PrivbenchError):
    """A NaN or infinite loss, weight, prediction or score: the run stops rather than report it.
    The CLI prints it as one line and exits with code 3."""


class Interrupted(PrivbenchError):
    """Ctrl-C: the message says what was kept and how to continue (the CLI exits with 130)."""
