"""Crash-safe file writing: write to a temporary name in the same folder, fsync, rename.

Every file of a run folder (weights, training state, config, metrics, figures, summary) and
of the data cache is written here, so three promises hold everywhere:

- a reader never sees half a file: the data goes to a temporary sibling first and is renamed
  into place in one step (``os.replace`` is atomic on POSIX and Windows);
- a power cut never leaves a renamed but empty file: the temporary file is fsynced before the
  rename and its folder after it, so the data reaches the disk before the name points at it,
  and the new name is on disk when the call returns;
- files get the mode the user's umask gives (``0o666 & ~umask``), like any file ``open``
  creates, instead of ``mkstemp``'s private ``0o600``.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to disk. Folders cannot be opened on Windows, where
    a rename is durable without it, so a folder that refuses to open is skipped."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if Path(path).is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except (PermissionError, IsADirectoryError):
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_temporary(path: Path) -> Path:
    """A new empty file next to ``path`` with the umask's mode; never an existing one."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {path}")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, fsync it, rename it into place
    and fsync the folder, so that a crash or a concurrent reader never sees half a file.

    Args:
        path: the file to write; its folder must exist.
        write: writes the whole content to the path it is given (it may reopen the file).

    Example:
        >>> atomic_write(Path("out.bin"), lambda tmp: tmp.write_bytes(b"data"))  # doctest: +SKIP
    """
    path = Path(path)
    tmp = _create_temporary(path)
    mode = stat.S_IMODE(tmp.stat().st_mode)  # 0o666 less the umask, as the system applied it
    try:
        write(tmp)
        if stat.S_IMODE(tmp.stat().st_mode) != mode:  # a writer that made its own file (safetensors: 0o600)
            os.chmod(tmp, mode)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """``atomic_write`` for a text file (UTF-8)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def append_text(path: Path, text: str) -> None:
    """Append ``text`` to an existing file and fsync it, so that a row reported written is on
    disk (a crash can at worst cut the last row short, which readers of logs must allow)."""
    with Path(path).open("a", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
