"""The errors discover raises for mistakes and conditions its user can fix.

Every such error derives from :class:`DiscoverError`; the command line prints these as one
line (exit status 2) and treats any other exception as a bug in discover (exit status 1,
with a pointer to ``--debug``). Each also derives from the built-in type it refines, so
``except ValueError`` keeps working.

Example:
    >>> import discover
    >>> try:
    ...     discover.create_model("no_such_model")
    ... except discover.DiscoverError as error:
    ...     print(type(error).__name__)
    InputError
"""

from __future__ import annotations

__all__ = ["DiscoverError", "InputError", "MissingExtraError", "NonFiniteError"]


class DiscoverError(Exception):
    """Base of every error that is the user's to fix: a bad argument or option, a damaged,
    stale or untrusted file, missing data or an optional dependency that is not installed."""


class InputError(DiscoverError, ValueError):
    """A value the user gave (an argument, an option, a file's content) is not what was
    expected; the message names it and says what was expected."""


class MissingExtraError(DiscoverError, ImportError):
    """An optional dependency is not installed; the message names the ``pip install
    'discover[extra]'`` that brings it."""

    def __init__(self, what: str, extra: str, package: str) -> None:
        super().__init__(
            f"{what} needs the optional package {package!r}, which is not installed; "
            f"install it with: pip install 'discover[{extra}]'"
        )
        self.extra = extra
        self.package = package


class NonFiniteError(InputError):
    """A model's weights, activations or outputs are NaN or infinite: its numbers are broken,
    and nothing computed from them (a label, a probability, a loss) would mean anything."""
