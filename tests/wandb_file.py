"""A reader of W&B's offline run files, so tests check what `wandb sync` would upload, not what we meant to log.

A `run-<id>.wandb` file is a 7-byte `:W&B` header and then LevelDB-log framing: 32 KiB blocks of records, each
with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last); a block's tail shorter than a
header is padding. Each whole record is a `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024


@dataclass
class OfflineRun:
    directory: Path
    run_id: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    files: set[str] = field(default_factory=set)


def _records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    pos, out, buf = 7, [], b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:
            pos += BLOCK - pos % BLOCK
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding up to the block's end
            pos += BLOCK - pos % BLOCK
            continue
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def read_run(directory: Path) -> OfflineRun:
    [path] = directory.glob("run-*.wandb")
    run = OfflineRun(directory)
    for rec in _records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.project, run.group, run.job_type = (rec.run.run_id, rec.run.project,
                                                                rec.run.run_group, rec.run.job_type)
        elif kind == "config":
            run.config.update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            run.history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "files":
            run.files.update(f.path for f in rec.files.files)
    return run


def offline_runs(wandb_dir: Path) -> list[OfflineRun]:
    """Every offline run under `wandb_dir` (W&B's `wandb/` folder), oldest first."""
    dirs = sorted(wandb_dir.glob("offline-run-*"), key=lambda d: d.stat().st_mtime_ns)
    return [read_run(d) for d in dirs]
