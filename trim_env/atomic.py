"""Writing files so that a killed process never leaves half of one, and hashing them.

Every output a later step reads (results, exported routers, training histories, summaries,
dataset files) is written to a temporary file in the same directory and renamed over the target:
a reader sees the old file or the new one, never a mixture. ``durable=True`` also fsyncs the file
and its directory, for data that must survive a power cut (collected records, growth shards).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
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
