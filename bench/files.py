"""Writing files so that readers never see half of one, the one guard every write goes through, and
locks between processes that share an output folder.

Every file or folder mtlbench writes (records, examples, tables, plots, checkpoints, baselines,
predictions) is made as a temporary beside its place and renamed over it (`atomic`): a reader sees
the old one or the new one. A temporary's name holds its writer's pid, so the next run into the
folder removes those whose writer is gone (a kill mid-write) and leaves a live writer's alone. A
write that fails - a read-only file system, a full disk, a file size limit - is one line naming the
path (a UserError), never a traceback."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mtlbench.tasks.errors import UserError

_TEMPORARY = re.compile(r"^\..+\.(\d+)-[^.]+\.tmp(\.\w+)?$")  # .NAME.PID-RANDOM.tmp[.ext]


def check_writable_folder(folder: Path, what: str) -> None:
    """`folder` is a directory this process can write in, or one it can make: else one line naming
    `what` (the option or variable that gave it) and why."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder}: exists and is not a directory")
    existing = folder
    while not existing.exists():
        if existing.is_symlink():
            raise UserError(f"{what} {folder}: {existing} is a symbolic link to {os.readlink(existing)}, "
                            "which does not exist")
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {folder}: {existing} is not a directory")
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".mtlbench-probe-", dir=existing)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise UserError(f"{what} {folder}: cannot write in {existing} ({error.strerror})") from None


def inside(root: Path, name: str) -> Path:
    """`root / name`, refused unless it stays inside `root` (names are checked when read, in
    tasks.names; this is the last guard before a write)."""
    path = Path(root) / name
    if Path(name).is_absolute() or ".." in Path(name).parts or not path.resolve().is_relative_to(Path(root).resolve()):
        raise UserError(f"{name!r}: a file name that leads out of {root}")
    return path


def _failed_write(error: BaseException) -> bool:
    """Whether `error` is the file system refusing a write: an OSError, or what a serialiser made of
    one (torch.save: a RuntimeError "... failed writing ..."; safetensors: "I/O error ... os error N")."""
    text = str(error)
    return isinstance(error, OSError) or (isinstance(error, RuntimeError) and "writ" in text) or "I/O error" in text


def cannot_write(path: Path, error: BaseException) -> UserError:
    """The one line for a write that failed: the path, and why (with the way out for a full disk)."""
    found = re.search(r"os error (\d+)", str(error))
    if isinstance(error, OSError) and error.strerror:
        reason = error.strerror
    elif found:
        reason = os.strerror(int(found.group(1)))
    else:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    hint = ("; free some space, then run the same command again to resume"
            if any(word in reason.lower() for word in ("space", "too large", "quota")) else "")
    return UserError(f"{path}: cannot write ({reason}){hint}")


@contextlib.contextmanager
def atomic(path: Path, folder: bool = False, suffix: str = "") -> Iterator[Path]:
    """A temporary file (or, with `folder`, directory) beside `path` to write into; when the block
    ends it is synced, given ordinary permissions (the umask's, not mkstemp's 0600) and renamed over
    `path`; if the block fails it is removed. `suffix` keeps an extension a writer needs (".png")."""
    path = Path(path)
    prefix = f".{path.name}.{os.getpid()}-"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if folder:
            temporary = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp" + suffix, dir=path.parent))
        else:
            descriptor, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp" + suffix, dir=path.parent)
            os.close(descriptor)
            temporary = Path(name)
    except OSError as error:
        raise cannot_write(path, error) from None
    try:
        yield temporary
        _finish(temporary, path, folder)
    except BaseException as error:
        _remove(temporary)
        if _failed_write(error):
            raise cannot_write(path, error) from None
        raise


def _finish(temporary: Path, path: Path, folder: bool) -> None:
    mode = 0o666 & ~umask()
    for file in ([p for p in temporary.iterdir() if p.is_file()] if folder else [temporary]):
        _fsync(file)
        file.chmod(mode)
    if folder:
        temporary.chmod(0o777 & ~umask())
        if path.exists():  # a re-saved checkpoint (a resume re-ran its epoch)
            shutil.rmtree(path)
    os.replace(temporary, path)
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stray_temporaries(folder: Path) -> list[Path]:
    """Temporaries under `folder` whose writer is no longer running (killed mid-write), removed;
    a live writer's (another process writing into the same folder) are left alone."""
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.rglob(".*.tmp*"):
        match = _TEMPORARY.match(path.name)
        if match and not running(int(match.group(1))):
            _remove(path)
            removed.append(path)
    return removed


def running(pid: int) -> bool:
    """Whether a process `pid` exists (another user's too)."""
    try:
        os.kill(pid, 0)  # signal 0: is it alive?
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


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
    with atomic(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDONLY if path.is_dir() else os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise cannot_write(path, error) from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)  # closing drops the lock
