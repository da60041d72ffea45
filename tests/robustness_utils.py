"""Test-only helpers for the robustness catalogue: unreadable files even when the tests run as root."""

from __future__ import annotations

import codecs
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

NOBODY = 65534


@contextlib.contextmanager
def without_root() -> Iterator[None]:
    """Run the block with the permissions of an ordinary user.

    Root reads any file whatever its mode, so as root the block runs with the effective uid of ``nobody``
    (files it touches must be in a folder others can enter, e.g. the ``open_tmp_path`` fixture).
    """
    if os.geteuid() != 0:
        yield
        return
    for codec in ("utf-8-sig", "cp437"):  # import lazily loaded codecs first: the interpreter may be in /root
        codecs.lookup(codec)
    try:
        os.seteuid(NOBODY)
    except PermissionError:
        pytest.skip("running as root without the right to change uid: permissions cannot be tested")
    try:
        yield
    finally:
        os.seteuid(0)


def make_removable(folder: Path) -> None:
    """Give back the permissions a test took away, so the folder can be deleted."""
    os.chmod(folder, 0o755)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(Path(root) / name, 0o755)
        for name in files:
            os.chmod(Path(root) / name, 0o644)
