"""Writing files so that a killed process never leaves half of one, and hashing them.

Every output a later step reads (results, exported routers, training histories, summaries,
dataset files) is written to a temporary file in the same directory and renamed over the target:
a reader sees the old file or the new one, never a mixture. ``durable=True`` also fsyncs the file
and its directory, for data that must survive a power cut (collected records, growth shards).
:class:`DirectoryLock` keeps two processes from writing into one output directory.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any


def fsync_directory(directory: str | Path) -> None:
    """Make renames in ``directory`` durable."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_atomic(path: str | Path, write: Callable[[Path], object], durable: bool = False) -> Path:
    """Call ``write(temporary_path)`` and rename the result to ``path`` (created parents included).

    :param path: the target file.
    :param write: writes the file's content to the path it is given.
    :param durable: fsync the file and its directory before returning.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(Path(scratch))
        if durable:
            with open(scratch, "rb") as file:
                os.fsync(file.fileno())
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise
    if durable:
        fsync_directory(path.parent)
    return path


def write_text(path: str | Path, text: str, durable: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return write_atomic(path, lambda scratch: scratch.write_text(text), durable)


def write_json(path: str | Path, content: Any, durable: bool = False) -> Path:
    """Write ``content`` as indented JSON (with a final newline) to ``path`` atomically."""
    return write_text(path, json.dumps(content, indent=2) + "\n", durable)


def replace_directory(target: str | Path, fill: Callable[[Path], object]) -> Path:
    """Build a directory with ``fill(temporary_directory)`` and swap it in for ``target``.

    A killed process leaves either the old directory or the new one whole (plus, at worst, a
    hidden temporary directory beside it), never a mixture of both runs' files.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fill(scratch)
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, retired / target.name)
            os.replace(scratch, target)
            shutil.rmtree(retired)
        else:
            os.replace(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return target


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (read in blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DirectoryLockedError(RuntimeError):
    """Another process holds the lock of an output directory."""


class DirectoryLock:
    """An exclusive lock on an output directory (``fcntl.flock`` on a lock file inside it).

    The operating system releases the lock when its process ends, killed or not, so a crashed run
    never leaves a stale lock behind; the file itself stays (it holds the last owner's pid).

    :param directory: the directory to lock (created if missing).
    :param what: what writes there, for the error message (e.g. ``"a collector"``).
    :param name: the lock file's name inside ``directory``.
    """

    def __init__(self, directory: str | Path, what: str = "another process", name: str = ".lock") -> None:
        self.directory = Path(directory)
        self.path = self.directory / name
        self.what = what
        self._handle: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`DirectoryLockedError` naming the directory and the holder."""
        self.directory.mkdir(parents=True, exist_ok=True)
        handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(handle, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(handle)
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise DirectoryLockedError(
                f"{self.directory} is in use: {self.what} (pid {holder}) holds {self.path}; "
                "wait for it to finish or write into another directory"
            ) from None
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
        self._handle = handle

    def release(self) -> None:
        """Give the lock back (the lock file stays)."""
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            os.close(self._handle)
            self._handle = None

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.release()
