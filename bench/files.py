"""Writing files so that readers never see half of one, and locks between processes that share an
output folder."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
from pathlib import Path


def jsonable(value):
    """`value` with NaN and infinities as null (JSON has none; null means "undefined", e.g. the
    correlation of a constant) and every key a string."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def write_json_atomic(path: Path, payload) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: readers never see half a file."""
    write_text_atomic(path, json.dumps(jsonable(payload), indent=2, allow_nan=False))


def write_text_atomic(path: Path, text: str) -> None:
    """Temporary file beside `path`, fsync, rename: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                     delete=False, encoding="utf-8") as handle:
        try:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), 0o666 & ~umask())  # as an ordinary file; mkstemp makes it 0600
        except BaseException:
            handle.close()
            Path(handle.name).unlink(missing_ok=True)
            raise
    os.replace(handle.name, path)


def umask() -> int:
    """The process's umask (reading it means setting it; set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def exclusive(path: Path, wait: bool):
    """An flock on `path` (a folder locks itself; a file is created), held inside the block: yields
    whether it was taken (with `wait`, always). Used so that two processes writing into one output
    directory never train the same run at once, and render tables one after the other."""
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDONLY if path.is_dir() else os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)  # closing drops the lock
