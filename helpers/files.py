"""Safe file writes: atomic replacement, JSON, clean-up after killed writers, free-space checks.

Every file the toolkit writes for later use (image caches, manifests, metrics, predictions, reports) goes
through :func:`atomic_write`: the data lands in a temporary file beside the target (``.<name>.<pid>.<random>
.tmp``) that replaces the target with one rename, so a reader or a crash sees either the old or the new file,
never half of one; the file and then its folder are fsynced, so the new file also survives a power cut. A
process killed mid-write leaves only its temporary file, which
:func:`remove_stale_temporaries` deletes once that process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

_TMP_PATTERN = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path`` atomically.

    On any error the temporary file is removed and the old ``path`` (if any) is left untouched; an
    ``OSError`` (disk full, permission denied, ...) is re-raised naming ``path`` and what to do.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except OSError as err:
        raise OSError(err.errno, f"Could not write {path} ({err.strerror or err}). {_advice(err)}") from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """For writers that need a real file name (e.g. Keras' ``model.save``): yields a file path inside a fresh
    temporary folder beside ``path``; on success that file replaces ``path`` atomically, as in
    :func:`atomic_write`. On any error the old ``path`` is untouched and the temporary folder is removed."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
        yield Path(tmp) / path.name
        fsync_files(tmp)
        os.replace(Path(tmp) / path.name, path)
        fsync_folder(path.parent)
    except OSError as err:
        raise OSError(err.errno, f"Could not write {path} ({err.strerror or err}). {_advice(err)}") from err
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def fsync_folder(folder: str | Path) -> None:
    """Flush ``folder``'s entries to disk, so a rename into it survives a power cut (no-op where folders
    cannot be opened or fsynced, e.g. on Windows or some filesystems)."""
    with contextlib.suppress(OSError):
        _fsync(folder)


def fsync_files(folder: str | Path) -> None:
    """Flush every file directly in ``folder``, then the folder itself, to disk."""
    for entry in os.scandir(folder):
        if entry.is_file(follow_symlinks=False):
            _fsync(entry.path)
    fsync_folder(folder)


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _advice(err: OSError) -> str:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "Free disk space (or write to another disk) and run again."
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "Choose a folder you can write to, or fix its permissions."
    return "Check the folder and run again."


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete the temporaries of :func:`atomic_write` and :func:`atomic_folder` in ``folder`` whose writing
    process no longer runs.

    Temporaries of live processes (e.g. a concurrent run filling the same cache) are kept. Returns how
    many files were removed.
    """
    removed = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            match = _TMP_PATTERN.match(entry.name)
            if match and not _process_alive(int(match.group(1))):
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.remove(entry.path)
                    removed += 1
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def free_bytes(folder: str | Path) -> int:
    """Free space on the disk holding ``folder`` (or its nearest existing parent), in bytes."""
    path = Path(folder).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def megabytes(n_bytes: float) -> str:
    """``n_bytes`` as a short readable MB figure."""
    return f"{n_bytes / 2**20:,.0f} MB"


def json_ready(value: Any) -> Any:
    """``value`` as plain JSON: numpy scalars and arrays, tuples and paths converted, NaN/inf -> None."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented strict JSON atomically (:func:`atomic_write`); NaN -> null."""
    text = json.dumps(json_ready(obj), indent=2, allow_nan=False)
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    return Path(path)
