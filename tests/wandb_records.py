"""Reads an offline W&B run file (run-<id>.wandb) back, record by record, so tests can check what a run wrote.

`wandb.Api` needs a server, and recent wandb releases no longer ship a Python reader of their own file. The format is
LevelDB's log format with a 7-byte header (":W&B", magic 0xBEE1, version 0): 32 KiB blocks of chunks, each chunk
a CRC-32, a length, a type (full, first, middle, last) and the bytes of a protobuf `Record`, or a piece of one.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    data = Path(path).read_bytes()
    ident, magic, version = HEADER.unpack_from(data)
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path} is not a W&B run file"
    out, pos, pending = [], HEADER.size, b""
    while pos + CHUNK.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        crc, length, kind = CHUNK.unpack_from(data, pos)
        body = data[pos + CHUNK.size:pos + CHUNK.size + length]
        pos += CHUNK.size + length
        if kind == 0 and length == 0:  # zero padding at the end of the file
            continue
        assert zlib.crc32(bytes([kind]) + body) & 0xFFFFFFFF == crc, f"{path}: bad checksum at byte {pos}"
        pending = body if kind in (FULL, FIRST) else pending + body
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out
