"""Hints: a box or clicks on one slice that steer one target when zero-shot is not enough.

A hint is given in voxel coordinates of the *input* grid, as napari (through salip's
reader) and the statistics' ``bbox_voxels`` show them:

* ``slice``: the index along the input file's axis that the slicing axis (``--axis``,
  axial by default) runs along, as the report's slice indices count;
* ``x``, ``y``: indices along the file's two other axes, ``x`` along the lower-numbered
  of the two and ``y`` along the other. For a NIfTI file stored ``[i, j, k]`` and axial
  slices that is ``x = i``, ``y = j``, ``slice = k``; for a 2D image ``x`` is the column,
  ``y`` the row and ``slice`` is 0;
* a box is XYXY, both corners inclusive voxel indices; a point is ``(x, y)`` and is
  positive (on the target) or negative (on something that is not).

:func:`parse_hint` reads the CLI's form (``liver:slice=40:box=120,80,260,210``,
``liver:slice=40:point=150,120:neg``); :func:`merge_hints` joins the hints one target gets
on one slice; :func:`check_hints` checks them against the run's targets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from salip.core.errors import ConfigError

__all__ = [
    "check_hints",
    "Hint",
    "HINT_SYNTAX",
    "merge_hints",
    "parse_hint",
    "read_hints",
]

#: How a hint is written on the command line (for error messages and --help).
HINT_SYNTAX = "TARGET:slice=N:box=X0,Y0,X1,Y1 or TARGET:slice=N:point=X,Y[:neg]"


@dataclass(frozen=True)
class Hint:
    """A box and/or points for one target on one slice (see the module docstring).

    Attributes:
        target: the target's name (a target of the run).
        slice: index along the input file's axis that the slicing axis runs along.
        box: XYXY voxel indices of the input grid (corners inclusive), or None.
        points: ``(x, y, positive)`` per click, in voxel indices of the input grid.
    """

    target: str
    slice: int
    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float, bool], ...] = ()

    def __post_init__(self) -> None:
        where = f"hint for {self.target!r}"
        if not isinstance(self.slice, int) or isinstance(self.slice, bool) or self.slice < 0:
            raise ConfigError(f"{where}: slice must be an index >= 0, got {self.slice!r}.")
        if self.box is not None:
            box = tuple(_number(v, where) for v in self.box)
            if len(box) != 4 or box[2] < box[0] or box[3] < box[1]:
                raise ConfigError(
                    f"{where}: a box is X0,Y0,X1,Y1 with X1 >= X0 and Y1 >= Y0, got {self.box}."
                )
            object.__setattr__(self, "box", box)
        points = []
        for point in self.points:
            if len(point) != 3:
                raise ConfigError(f"{where}: a point is (x, y, positive), got {point!r}.")
            points.append((_number(point[0], where), _number(point[1], where), bool(point[2])))
        object.__setattr__(self, "points", tuple(points))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: ``target``, ``slice``, ``box`` (or None), ``points`` as
        ``[x, y, "pos"|"neg"]``."""
        return {
            "target": self.target,
            "slice": self.slice,
            "box": list(self.box) if self.box is not None else None,
            "points": [[x, y, "pos" if positive else "neg"] for x, y, positive in self.points],
        }


def _number(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a number.") from None
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"{where}: coordinates are voxel indices >= 0, got {value!r}.")
    return number


def parse_hint(text: str) -> Hint:
    """A hint from its CLI form: ``TARGET:slice=N`` and ``box=X0,Y0,X1,Y1`` and/or
    ``point=X,Y`` items, each point positive unless followed by ``:neg``.

    Raises:
        ConfigError: a malformed hint; the message shows the syntax.
    """
    parts = [p.strip() for p in str(text).split(":")]
    target, items = parts[0], parts[1:]
    if not target or not items:
        raise ConfigError(f"--hint {text!r}: write {HINT_SYNTAX}.")
    slice_index, box, points = None, None, []
    for item in items:
        key, _, value = item.partition("=")
        key = key.strip().lower()
        if key in ("neg", "pos") and not value:
            if not points:
                raise ConfigError(f"--hint {text!r}: ':{key}' follows a point=X,Y.")
            points[-1] = (*points[-1][:2], key == "pos")
        elif key == "slice":
            try:
                slice_index = int(value)
            except ValueError:
                raise ConfigError(f"--hint {text!r}: slice must be an integer.") from None
        elif key == "box":
            box = tuple(_numbers(value, 4, text))
        elif key == "point":
            points.append((*_numbers(value, 2, text), True))
        else:
            raise ConfigError(f"--hint {text!r}: unknown item {item!r}; write {HINT_SYNTAX}.")
    if slice_index is None:
        raise ConfigError(f"--hint {text!r}: give the slice (slice=N); write {HINT_SYNTAX}.")
    return Hint(target, slice_index, box, tuple(points))  # type: ignore[arg-type]


def _numbers(value: str, count: int, text: str) -> list[float]:
    fields = [v.strip() for v in value.split(",")]
    if len(fields) != count:
        raise ConfigError(f"--hint {text!r}: expected {count} comma-separated numbers.")
    try:
        return [float(v) for v in fields]
    except ValueError:
        raise ConfigError(f"--hint {text!r}: {value!r} holds a non-number.") from None


def read_hints(hints: Iterable[Hint | str | Mapping[str, Any]] | None) -> tuple[Hint, ...]:
    """Hints given as :class:`Hint`, CLI strings or mappings of Hint's fields (points as
    ``[x, y]`` or ``[x, y, "neg"]``), merged (:func:`merge_hints`)."""
    out: list[Hint] = []
    for hint in hints or ():
        if isinstance(hint, Hint):
            out.append(hint)
        elif isinstance(hint, str):
            out.append(parse_hint(hint))
        elif isinstance(hint, Mapping):
            out.append(_from_mapping(hint))
        else:
            raise ConfigError(f"a hint is a salip Hint, a string or a dict, got {hint!r}.")
    return merge_hints(out)


def _from_mapping(hint: Mapping[str, Any]) -> Hint:
    unknown = set(hint) - {"target", "slice", "box", "points"}
    if unknown or "target" not in hint or "slice" not in hint:
        raise ConfigError(
            f"a hint dict has target, slice, and box and/or points; got keys {sorted(hint)}."
        )
    points = []
    for point in hint.get("points") or ():
        point = list(point)
        sign = point[2] if len(point) > 2 else "pos"
        positive = sign is True or str(sign).lower() in ("pos", "true", "1", "+")
        points.append((point[0], point[1], positive))
    box = hint.get("box")
    return Hint(str(hint["target"]), hint["slice"], tuple(box) if box else None, tuple(points))


def merge_hints(hints: Sequence[Hint]) -> tuple[Hint, ...]:
    """One hint per (target, slice): points joined, in order.

    Raises:
        ConfigError: two boxes for one target on one slice, or a slice with neither a box
            nor a positive point.
    """
    merged: dict[tuple[str, int], Hint] = {}
    for hint in hints:
        key = (hint.target, hint.slice)
        if key not in merged:
            merged[key] = hint
            continue
        old = merged[key]
        if old.box is not None and hint.box is not None:
            raise ConfigError(
                f"two boxes for {hint.target} on slice {hint.slice}; give one box per slice."
            )
        merged[key] = Hint(hint.target, hint.slice, old.box or hint.box, old.points + hint.points)
    for hint in merged.values():
        if hint.box is None and not any(p[2] for p in hint.points):
            raise ConfigError(
                f"hint for {hint.target!r} on slice {hint.slice}: give a box or a positive "
                "point too; negative points only say what the target is not."
            )
    return tuple(merged.values())


def check_hints(hints: Sequence[Hint], targets: Mapping[str, Sequence[str]]) -> None:
    """Check that each hint names a target of the run and that the target is one
    structure.

    Args:
        hints: the run's hints.
        targets: target name -> its parts (a left/right pair has two; others none).

    Raises:
        ConfigError: a hint for a target the run does not segment, or for a pair.
    """
    for hint in hints:
        if hint.target not in targets:
            raise ConfigError(
                f"a hint names {hint.target!r}, which this run does not segment; targets: "
                f"{', '.join(targets)}."
            )
        parts = targets[hint.target]
        if parts:
            raise ConfigError(
                f"{hint.target} is a pair; a box or click shows one side: segment and hint "
                f"{' or '.join(parts)} instead."
            )
