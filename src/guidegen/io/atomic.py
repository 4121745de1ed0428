"""Write-to-temporary-then-rename, so that a crash or a bad input never leaves half an output."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from guidegen.errors import InputError, OutputExistsError

#: errno values that mean the disk (or the user's quota) is full.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFullError(InputError):
    """The disk filled up while an output was written; the temporary was removed, nothing was written."""

    def __init__(self, path: str | Path, reason: str = "No space left on device"):
        self.reason = reason
        super().__init__(path, f"no space left on the device: {reason} (nothing was written)")


def _disk_full(exc: BaseException, path: Path) -> DiskFullError | None:
    """The `DiskFullError` naming ``path`` that ``exc`` amounts to, or None when it is another error."""
    if isinstance(exc, DiskFullError):
        return DiskFullError(path, exc.reason)
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return DiskFullError(path, exc.strerror or os.strerror(exc.errno))
    return None


@contextlib.contextmanager
def _disk_full_names(path: Path) -> Iterator[None]:
    """Re-raise a full-disk error in the block as a `DiskFullError` naming ``path``; others unchanged."""
    try:
        yield
    except (OSError, DiskFullError) as exc:
        full = _disk_full(exc, path)
        if full is None:
            raise
        raise full from None


def _umask() -> int:
    """The process's file-creation mask (reading it means setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(path: str | Path, overwrite: bool) -> Path:
    """Refuse to replace an existing output unless ``overwrite`` is set."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(path)
    return path


def _make_parent(path: Path) -> None:
    """Create the folder ``path`` goes into; a file in the way is named as the problem."""
    for parent in (path.parent, *path.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise InputError(parent, f"is a file, so it cannot hold {path.name}")
            break
    path.parent.mkdir(parents=True, exist_ok=True)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and then the folders themselves to the disk."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(Path(folder))


@contextlib.contextmanager
def atomic_file(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the final suffixes (``.nii.gz`` …) so that writers that look at the
    extension behave as for the real name. A full disk (``ENOSPC``, ``EDQUOT``) in the block or the
    rename becomes a `DiskFullError` naming ``path``, raised after the temporary is removed.
    """
    path = check_writable(path, overwrite)
    if path.is_dir():
        raise InputError(path, "is a folder; give a file name")
    _make_parent(path)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file owner-only; every output gets the mode a plain open() would give it.
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        with _disk_full_names(path):
            yield tmp_path
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only when the block succeeds.

    Its files and folders are fsynced before the rename and the parent folder after it, so that
    after a crash (even a power loss) ``path`` is either the old folder or the complete new one.
    A full disk (``ENOSPC``, ``EDQUOT``) becomes a `DiskFullError` naming ``path``, raised after the
    temporary folder is removed (an old ``path`` is kept).
    """
    path = check_writable(path, overwrite)
    if path.exists() and not path.is_dir():
        raise InputError(path, "is a file; give a folder name")
    _make_parent(path)
    tmp_path = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp_path, 0o777 & ~_umask())  # mkdtemp's folder is owner-only; a plain mkdir's is not
    try:
        with _disk_full_names(path):
            yield tmp_path
            _fsync_tree(tmp_path)
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                if old.exists():
                    shutil.rmtree(old)
                os.replace(path, old)
                try:
                    os.replace(tmp_path, path)
                except OSError:
                    os.replace(old, path)  # put the old folder back
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            shutil.rmtree(tmp_path, ignore_errors=True)


def write_text(path: str | Path, text: str, overwrite: bool = False) -> Path:
    """Atomically write a text file."""
    with atomic_file(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
