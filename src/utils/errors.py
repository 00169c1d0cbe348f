"""Errors a user can cause: the entry points print their message and exit without a traceback."""


class UserError(Exception):
    """A bad path, config value or file; the message names it and says what was expected."""
