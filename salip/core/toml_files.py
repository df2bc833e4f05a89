"""TOML config files (the benchmark's, the head training's): read, with their top-level
keys and tables checked, and errors that name the file and the valid keys."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from salip.core.errors import SalipError, did_you_mean

__all__ = ["check_keys", "read_config", "read_toml"]


def read_toml(path: Path, what: str, error: type[SalipError]) -> dict[str, Any]:
    """The tables of a TOML config file.

    Args:
        path: the file.
        what: its name in messages, e.g. "config" or "head config".
        error: the exception type to raise.

    Raises:
        error: a missing file, or one that cannot be read or parsed.
    """
    if not path.is_file():
        raise error(f"{what} {path} not found; pass --config FILE.toml.")
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise error(f"cannot read {what} {path}: {exc}.") from exc


def check_keys(
    where: str, keys: Sequence[str], valid: Sequence[str], error: type[SalipError]
) -> None:
    """Raise ``error`` naming unknown ``keys`` of a config table, a close valid key, and
    the valid keys."""
    bad = [k for k in keys if k not in valid]
    if bad:
        hint = did_you_mean(bad[0], valid, cutoff=0.6)
        raise error(
            f"{where}: unknown key(s) {', '.join(bad)}.{hint} Valid keys: {', '.join(valid)}."
        )


def read_config(
    path: Path,
    what: str,
    keys: Sequence[str],
    tables: Sequence[str],
    error: type[SalipError],
) -> dict[str, Any]:
    """:func:`read_toml`, with its top-level keys checked against ``keys`` and each of
    ``tables`` that is present checked to be a table (``[name]``)."""
    raw = read_toml(path, what, error)
    check_keys(f"{what} {path.name}", list(raw), keys, error)
    for key in tables:
        if not isinstance(raw.get(key, {}), dict):
            raise error(f"{what} {path.name}: [{key}] must be a table.")
    return raw
