"""A small filesystem that a test can fill up: a size-limited tmpfs mounted for the test.

    with tiny_filesystem(tmp_path / "disk") as disk:
        ...                      # put the database on `disk`
        with filled(disk):
            ...                  # every write there now fails with ENOSPC
        ...                      # the space is free again

Mounting needs root (or CAP_SYS_ADMIN); without it the test is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

_BLOCK = b"\xff" * 65536


@contextlib.contextmanager
def tiny_filesystem(mount_point: Path, size_kib: int = 1024) -> Iterator[Path]:
    mount_point.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("no `mount` command: cannot make a small filesystem to fill")
    made = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(
            "cannot mount a size-limited tmpfs to simulate a full disk (needs root or "
            f"CAP_SYS_ADMIN): {made.stderr.strip()}"
        )
    try:
        yield mount_point
    finally:
        # Lazy as a fallback: a file a failed test left open must not leave the mount behind.
        if subprocess.run(["umount", str(mount_point)], timeout=10, check=False).returncode:
            subprocess.run(["umount", "-l", str(mount_point)], timeout=10, check=False)


@contextlib.contextmanager
def filled(directory: Path) -> Iterator[None]:
    """Fill the filesystem of `directory` to the last byte, and free the space afterwards."""
    filler = directory / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        # Large blocks, then single bytes: the last partial block must be taken too.
        for block in (_BLOCK, _BLOCK[:1]):
            with contextlib.suppress(OSError):
                while True:
                    os.write(descriptor, block)
    finally:
        os.close(descriptor)
    try:
        yield
    finally:
        filler.unlink()
