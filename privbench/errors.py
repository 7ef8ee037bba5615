"""Errors a user can cause: the CLI prints them as one line and exits with code 2."""


class PrivbenchError(Exception):
    """A problem with the user's input (name, option, data, folder), not a bug in privbench."""
