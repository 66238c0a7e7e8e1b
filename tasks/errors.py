"""Errors the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a config key, a name, a data file. Never a bug in mtlbench."""
