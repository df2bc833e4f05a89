"""Exceptions raised for user-facing problems.

Every message is one line that says what went wrong and what to do next. The CLI prints
``str(error)`` and exits non-zero; a traceback is shown only with ``-v``.
"""

from __future__ import annotations


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
