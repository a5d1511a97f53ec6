"""Reads the records of an offline W&B run (`run-*.wandb`) without W&B's servers: a
LevelDB-style log (32 KiB blocks of CRC32-checked chunks) after a 7-byte `:W&B` header,
each record one `wandb_internal_pb2.Record`."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

HEADER = b":W&B\xe1\xbe\x00"
BLOCK = 32768
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[Any]:
    """Every record of the run, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data.startswith(HEADER), "not a W&B run file"
    position, pending, found = len(HEADER), b"", []
    while position + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - position % BLOCK
        if left_in_block < CHUNK_HEADER:  # the rest of a block is padding
            position += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + CHUNK_HEADER])
        start = position + CHUNK_HEADER
        chunk, position = data[start : start + length], start + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            found.append(record)
    return found
