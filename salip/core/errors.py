"""Exceptions raised for user-facing problems.

Every message is one line that says what went wrong and what to do next. The CLI prints
``str(error)`` and exits non-zero; a traceback is shown only with ``-v``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable

__all__ = [
    "BenchmarkError",
    "ConfigError",
    "did_you_mean",
    "DownloadError",
    "GenerationError",
    "InputError",
    "ModelError",
    "one_line",
    "OrganError",
    "OutputError",
    "SalipError",
    "ServiceError",
]


def did_you_mean(
    word: str,
    options: Iterable[str],
    *,
    n: int = 1,
    cutoff: float = 0.5,
    show: Callable[[str], str] | None = None,
) -> str:
    """`` Did you mean: a, b?`` for the ``n`` options closest to ``word``, or "".

    Args:
        word: what the user wrote.
        options: the valid spellings (difflib's ratio ranks them, best first).
        n, cutoff: at most ``n`` suggestions, each at least ``cutoff`` similar.
        show: maps a matched option to the name to suggest (repeats are dropped), e.g. a
            synonym to its canonical name.
    """
    close = difflib.get_close_matches(str(word), list(options), n=n, cutoff=cutoff)
    names = list(dict.fromkeys(show(c) if show else c for c in close))
    return f" Did you mean: {', '.join(names)}?" if names else ""


def one_line(text: object, limit: int = 200) -> str:
    """The first non-blank line of ``text``, cut to ``limit`` characters.

    Errors of torch and other libraries span many lines; salip's messages are one line.
    """
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return first if len(first) <= limit else first[: limit - 3].rstrip() + "..."


class SalipError(Exception):
    """Base class for every error salip reports to its user."""


class InputError(SalipError):
    """A missing, unreadable, corrupt or unsupported input file."""


class OrganError(SalipError):
    """An organ name that salip does not know."""


class ModelError(SalipError):
    """A missing, unreadable or incompatible model checkpoint."""


class DownloadError(SalipError):
    """A checkpoint download that failed or did not verify."""


class OutputError(SalipError):
    """An output that would overwrite data or cannot be written."""


class ConfigError(SalipError):
    """An invalid setting."""


class GenerationError(SalipError):
    """A language-model request for descriptions that failed or gave an unusable reply."""


class BenchmarkError(SalipError):
    """A benchmark config, dataset layout or case that cannot be used as given."""


class ServiceError(SalipError):
    """A salip server that cannot be reached, refused a request, or failed a job."""
