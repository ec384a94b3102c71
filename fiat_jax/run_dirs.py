"""Run, output and cache directories checked before any work: one line naming the path and the problem.

A MODEL_DIR that is a file, or one the process cannot write, would otherwise surface as a raw NotADirectoryError
or PermissionError from deep inside orbax or a writer, after minutes of start-up.
"""

from __future__ import annotations

import errno
import os
import pathlib
import uuid

from fiat_jax.errors import UserError


def describe_os_error(err: OSError) -> str:
    """``[Errno 13] Permission denied: '/x'`` -> ``permission denied`` (the path is named by the caller)."""
    if err.errno is not None:
        return os.strerror(err.errno).lower()
    return str(err) or type(err).__name__


def check_writable_dir(path: str | os.PathLike, *, what: str, create: bool = True) -> pathlib.Path:
    """Make sure ``path`` is (or can be made) a directory this process can create files in.

    ``create=False`` checks only a directory that already exists (one that does not is created later, by its
    writer, inside a parent checked here). Writability is probed by creating and removing a file, which is the
    only test that holds for root, read-only mounts and immutable directories alike.
    """
    path = pathlib.Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a directory")
    if not path.exists():
        if not create:
            return path
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise UserError(f"{what} {path}: {parent} is a file, not a directory")
                break
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"{what} {path}: cannot create it ({describe_os_error(err)})") from None
    probe = path / f".fiat_write_probe.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "w"):
            pass
    except OSError as err:
        reason = "not writable" if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else None
        raise UserError(f"{what} {path} is {reason} ({describe_os_error(err)})" if reason else
                        f"{what} {path}: cannot write in it ({describe_os_error(err)})") from None
    try:
        probe.unlink()
    except OSError:
        pass
    return path
