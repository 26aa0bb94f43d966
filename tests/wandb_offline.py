"""Reading an offline W&B run back: the records of its ``.wandb`` transaction log.

wandb 0.31 ships no Python reader for the log (its writer is wandb-core, in Go); the format is
LevelDB's log format (32 KiB blocks of checksummed chunks) after a 7-byte W&B header, each record
a ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

#: LevelDB log chunk types that end a record (FULL, LAST).
_RECORD_ENDS = (1, 4)


def wandb_records(path: Path) -> list[Any]:
    """The records of a ``.wandb`` transaction log, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    block, position, pending, records = 32 * 1024, 7, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # block trailer
            position += left
            continue
        length, kind = struct.unpack("<HB", data[position + 4 : position + 7])
        if length == 0 and kind == 0:  # zero padding
            position += left
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in _RECORD_ENDS:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def of_type(records: list[Any], record_type: str) -> list[Any]:
    """The records of one type (``run``, ``history``, ``summary``, ``artifact``, ``exit``, ...)."""
    return [getattr(record, record_type) for record in records if record.WhichOneof("record_type") == record_type]


def item_key(item: Any) -> str:
    """A history or summary item's key (nested keys joined by ``/``)."""
    return item.key or "/".join(item.nested_key)


def history_rows(records: list[Any]) -> list[dict[str, Any]]:
    """Every logged history row, its values parsed from JSON."""
    return [{item_key(item): json.loads(item.value_json) for item in history.item} for history in of_type(records, "history")]


def offline_run_dir(root: Path) -> Path:
    """The one ``offline-run-*`` directory under ``root``."""
    logs = list(root.glob("**/offline-run-*/*.wandb"))
    assert len(logs) == 1, f"expected one offline W&B run under {root}, found {logs}"
    return logs[0].parent
