"""Errors the CLI turns into a one-line message and exit code 2."""

import difflib


class UserError(Exception):
    """Bad input from the user: a config key, a name, a data file. Never a bug in mtlbench."""


def nearest(name: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.0)
    return f" (did you mean '{match[0]}'?)" if match else ""
