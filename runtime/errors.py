"""The one family of user errors: input a user can fix (a missing model, a malformed program, an
out-of-range flag). `aspd` prints such an error as one line `error: ...` and exits 2; anything else
is a bug and keeps its traceback. Pure Python, imports nothing."""

from __future__ import annotations


class UserError(Exception):
    """An error the user caused and can fix; its message says what and where."""
