"""Errors a user can cause: the entry points print their message and exit without a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue


class UserError(Exception):
    """A bad path, config value or file; the message names it and says what was expected."""


class MissingValueError(UserError):
    """A config value left `???` was read; the message names the key."""


def find_user_error(exc: BaseException | None) -> UserError | None:
    """The UserError behind `exc`: Hydra's instantiate wraps constructor errors in its own exception.

    A `???` value that was read (OmegaConf's MissingMandatoryValue, a multi-line message) becomes
    a MissingValueError naming the key. OmegaConf re-raises a resolver's exception as an
    InterpolationResolutionError without `from` (src/utils/resolvers.py), so there the UserError
    is the exception's context.
    """
    while exc is not None:
        if isinstance(exc, UserError):
            return exc
        if isinstance(exc, MissingMandatoryValue):
            key = exc.full_key or "a config value"
            return MissingValueError(f"{key} is mandatory (???) and has no value: pass {key}=...")
        if isinstance(exc, InterpolationResolutionError) and exc.__cause__ is None:
            exc = exc.__context__
        else:
            exc = exc.__cause__
    return None


@contextmanager
def exit_on_user_error(reraise: bool = False) -> Iterator[None]:
    """Turn a user's mistake into one line on stderr and exit status 1 (or re-raise it, for sweeps)."""
    try:
        yield
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None or reraise:
            raise
        raise SystemExit(f"seglab: error: {user_error}") from None
