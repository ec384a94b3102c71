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


def check_writable_dir(path: str | os.PathLike, *, what: str) -> pathlib.Path:
    """Raise a one-line UserError unless ``path`` is a directory this process can create files in, or can be
    created as one. Leaves nothing on disk: a missing directory is created later by its writer; here its nearest
    existing ancestor is checked instead.

    Writability is probed by creating and removing a file, the only test that holds for root (who ignores mode
    bits), read-only mounts and immutable (``chattr +i``) directories alike.
    """
    path = pathlib.Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a directory")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {path} cannot be created: {existing} is a file, not a directory")
    probe = existing / f".fiat_write_probe.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "w"):
            pass
    except OSError as err:
        where = f"{what} {path}" + ("" if existing == path else f" cannot be created: {existing}")
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise UserError(f"{where} is not writable ({describe_os_error(err)})") from None
        raise UserError(f"{where}: cannot write in it ({describe_os_error(err)})") from None
    try:
        probe.unlink()
    except OSError:
        pass
    return path
