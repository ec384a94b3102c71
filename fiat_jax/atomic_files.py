"""Crash-safe file writes shared by every layer (teacher outputs, metrics logs): a file is either its old or its
new content after a crash, never half of each, and an appended row is on disk before the call returns."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename or a new file in it survives a power cut (best effort: not every filesystem
    lets a directory be opened)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_lines(path: str | os.PathLike, lines: Sequence[str]) -> None:
    """Replace ``path`` by ``lines`` (one per line) atomically: temp file, fsync, rename, fsync the directory."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class Appender:
    """Appends one line per call, written whole and fsync'd before returning; the file is created at the first
    line (a run that has nothing to write leaves no file)."""

    def __init__(self, path: str | os.PathLike):
        self._path = pathlib.Path(path)
        self._fd: int | None = None

    def write(self, line: str) -> None:
        if self._fd is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(str(self._path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        view = memoryview((line + "\n").encode("utf-8"))
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
