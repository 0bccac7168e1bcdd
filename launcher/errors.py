"""One error tree for the whole project.

    LauncherError                 anything launcher reports as one readable line (exit 1)
    ├── UserInputError            bad input from the user: nothing was launched (exit 2)
    │   ├── SpecError             a job spec or training config that does not validate
    │   ├── DataError             a dataset line that is not valid (names file and line)
    │   ├── NotFoundError         a file, job id or endpoint that does not exist
    │   ├── MissingExtraError     an optional dependency is not installed (says which extra)
    │   └── UnsupportedError      a backend cannot do what was asked (says why)
    ├── BackendError              a cloud or local backend call failed (exit 1)
    └── JobFailedError            the job ran and failed (exit 1)

Every message names the bad value and how to fix it ("To fix: ..."). Callers at the border (the CLI,
the training entrypoint) print ``Error: <message>`` on stderr and exit with ``exit_code``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LauncherError(Exception):
    """An error launcher reports as one readable line."""

    exit_code = 1
    details: tuple[str, ...] = ()  # lines shown before the message when there are several problems, one each


class UserInputError(LauncherError):
    """Bad input from the user; nothing was launched, staged or written."""

    exit_code = 2


class SpecError(UserInputError):
    """A job spec or training config that does not validate."""


class DataError(UserInputError):
    """A dataset line that is not valid; the message names file and line."""


class NotFoundError(UserInputError):
    """A file, job id or endpoint that does not exist."""


class MissingExtraError(UserInputError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, module: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the Python package '{module}', which is not installed. "
            f'To fix: pip install "launcher[{extra}]"'
        )


class UnsupportedError(UserInputError):
    """A backend cannot do what was asked; the message says why."""


class BackendError(LauncherError):
    """A backend call failed (cloud API error, local process error)."""


class JobFailedError(LauncherError):
    """The job ran and failed."""


def reason(exc: BaseException) -> str:
    """An exception's message for use inside one of ours: its first non-empty line, whole (never cut at a
    character count), or the exception's type name when it has no message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0].rstrip(".") if lines else type(exc).__name__


# Characters a typist swaps for one another: letter O and zero, letters I and l and one ('H1OO', 'A1OO').
_LOOKALIKES = str.maketrans({"o": "0", "i": "1", "l": "1"})


def _fold(text: str) -> str:
    return text.lower().translate(_LOOKALIKES)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest choice, or '' when nothing is close. Where nothing is close
    as typed, case and look-alike characters (O/0, I/l/1) are ignored: 'H1OO' finds 'H100'."""
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        folded = {_fold(choice): choice for choice in choices}
        close = [folded[m] for m in difflib.get_close_matches(_fold(word), list(folded), n=1, cutoff=0.6)]
    return f" Did you mean '{close[0]}'?" if close else ""
