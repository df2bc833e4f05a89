"""Writing: masks back in the input's exact grid, written atomically.

Rules: never write into the input, never replace an existing file unless asked, and write
to a temporary file in the target folder that is renamed into place only when complete.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from salip.core.errors import OutputError
from salip.io import SourceGeometry

__all__ = [
    "atomic_write",
    "check_output",
    "file_mode",
    "json_text",
    "mask_suffix",
    "name_problem",
    "nearest_existing",
    "os_problem",
    "remove_temporaries",
    "save_mask",
    "sidecar_path",
    "temporary_beside",
    "write_json",
    "write_mask",
    "write_problem",
]

logger = logging.getLogger(__name__)


def check_output(path: Path, input_path: Path, overwrite: bool) -> None:
    """Refuse outputs that are the input, lie inside a DICOM input folder, or exist."""
    resolved, source = path.resolve(), input_path.resolve()
    if resolved == source or (source.is_dir() and source in resolved.parents):
        raise OutputError(f"{path}: refusing to write into the input {input_path}.")
    if path.exists() and path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name.")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists; pass --overwrite to replace it.")


def file_mode() -> int:
    """Permission bits a new file gets from the process umask (0o644 under umask 022).

    ``tempfile.mkstemp`` creates files with mode 0600, and a rename keeps it, so files
    written through a temporary are given this mode before they are renamed into place.
    """
    umask = _read_umask()
    return 0o666 & ~umask


def _read_umask() -> int:
    # Linux shows the umask in /proc without changing it; elsewhere the only portable way
    # is to set it and put it back (os.umask has no read-only form before Python 3.13).
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def nearest_existing(folder: Path) -> Path:
    """``folder``, or its nearest parent that exists (where it would be created)."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def write_problem(folder: Path) -> str | None:
    """Why no file can be created in ``folder``, or None if one can; creates nothing.

    A folder that does not exist yet is judged by its nearest existing parent (it would be
    created there). The check creates and removes a temporary file, which also catches
    read-only file systems and, unlike ``os.access``, means what it says for root.
    """
    existing = nearest_existing(folder)
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return f"cannot write in {existing} ({exc.strerror or exc})"
    return None


def _name_max(folder: Path) -> int:
    """The longest file name the file system of ``folder`` (or its nearest existing parent)
    allows, in bytes; 255 where it cannot be asked."""
    try:
        return int(os.pathconf(nearest_existing(folder), "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def name_problem(path: Path) -> str | None:
    """Why ``path`` (or the temporary written beside it first) cannot be created for the
    length of its name, or None. Checked before any model runs."""
    suffix = "".join(path.suffixes) or ".tmp"
    longest = len(f".{path.name}.".encode()) + 8 + len(suffix.encode())
    limit = _name_max(path.parent)
    if longest > limit:
        return (
            f"the file name is too long for its file system ({len(path.name.encode())} bytes, "
            f"{longest} with the temporary salip writes first; at most {limit})"
        )
    return None


def os_problem(exc: OSError) -> str:
    """An operating-system error as a short cause: "No space left on device (errno 28)"."""
    if exc.errno is not None and exc.strerror:
        return f"{exc.strerror} (errno {exc.errno})"
    return str(exc) or type(exc).__name__


def temporary_beside(path: Path, suffix: str | None = None) -> Path:
    """A new empty file beside ``path`` (same folder, so the final rename is atomic).

    Its name is ``.<name>.<random><suffix>``; ``suffix`` defaults to ``path``'s own.
    """
    suffix = suffix or "".join(path.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp_name)


def remove_temporaries(path: Path) -> int:
    """Delete the temporaries of :func:`temporary_beside` for ``path`` left behind by a
    process that was killed while writing it; returns how many there were. Only call it
    when no other process is writing ``path``."""
    removed = 0
    if path.parent.is_dir():
        for tmp in path.parent.glob(f".{glob.escape(path.name)}.*"):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` to ``path``; clean up on failure.

    The file gets the umask's normal mode (:func:`file_mode`), not the temporary's 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def mask_suffix(kind: str) -> str:
    """File suffix of masks for an input of ``kind`` (:attr:`SourceGeometry.kind` or
    :func:`salip.io.input_kind`): .png for 2D images, else .nii.gz."""
    return ".png" if kind == "image" else ".nii.gz"


def write_mask(path: Path, mask: np.ndarray, geometry: SourceGeometry) -> None:
    """Write a uint8 mask already in the input's grid.

    NIfTI and DICOM inputs get a NIfTI file with the input's affine (and header, for NIfTI
    inputs) and uint8 voxels; 2D inputs get a single-channel 8-bit PNG of the same size.
    """
    atomic_write(path, lambda tmp: save_mask(tmp, mask, geometry))


def save_mask(path: Path, mask: np.ndarray, geometry: SourceGeometry) -> None:
    """Write ``mask`` to ``path`` as it is (no temporary): the body of :func:`write_mask`."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if geometry.kind == "image":
        from PIL import Image

        Image.fromarray(mask).save(path, format="PNG")
        return
    import nibabel as nib

    header = geometry.header.copy() if geometry.header is not None else None
    if header is not None:  # trailing singleton axes of the input ((X,Y,Z,1)) kept
        stored = tuple(int(n) for n in header.get_data_shape())
        if stored != mask.shape and stored[: mask.ndim] == mask.shape:
            mask = mask.reshape(stored)
    image = nib.Nifti1Image(mask, geometry.affine, header=header)
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1.0, 0.0)
    if header is None:
        image.header.set_xyzt_units("mm")
        image.set_qform(geometry.affine, code=1)
        image.set_sform(geometry.affine, code=1)
    nib.save(image, str(path))


def json_text(payload: Any) -> str:
    """``payload`` as salip writes JSON: 2-space indent, trailing newline, numpy as lists."""
    return json.dumps(payload, indent=2, default=_json_default) + "\n"


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (2-space indent, trailing newline)."""
    text = json_text(payload)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def sidecar_path(mask_path: Path) -> Path:
    """``liver.nii.gz`` -> ``liver.json``; ``out.png`` -> ``out.json``."""
    name = mask_path.name
    for suffix in (".nii.gz", ".nii", ".png"):
        if name.endswith(suffix):
            return mask_path.with_name(name[: -len(suffix)] + ".json")
    return mask_path.with_name(name + ".json")
