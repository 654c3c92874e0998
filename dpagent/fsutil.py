"""Atomic, permission-safe file writes with no heavy imports (the agent process uses them; see DESIGN §4 on RSS)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Write via a temp file in the same directory and rename, so readers (Envoy's file SDS) never see half a file.

    The temp file is created with `mode` from the first byte (O_CREAT|O_EXCL), never chmod-ed later, so a secret is
    never readable by others even for an instant.
    """
    target = Path(path)
    directory = target.parent
    fd = -1
    tmp = ""
    for _ in range(100):
        tmp = str(directory / f".{target.name}.{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
            break
        except FileExistsError:
            continue
    if fd < 0:  # pragma: no cover - 100 random-name collisions
        raise OSError(f"cannot create a temporary file in {directory}")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself; Windows has no directory fds, which is fine there."""
    if os.name != "posix":  # pragma: no cover
        return
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(dfd)


def write_private(path: str | os.PathLike[str], data: bytes) -> None:
    """Private material is 0600 from creation; it never leaves this host."""
    write_atomic(path, data, mode=0o600)
