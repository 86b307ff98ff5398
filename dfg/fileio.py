"""Crash-safe file writes shared by the run store and checkpoints: temp file + fsync + rename, a full disk
reported as `DiskFullError` naming the file, process liveness, and the DFG_FAULT test hook."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from pathlib import Path

import numpy as np


class DiskFullError(RuntimeError):
    """A write ran out of space; the message names the file and the fix."""


def fault(point: str, step: int) -> bool:
    """Test hook: True when the environment variable DFG_FAULT lists `point:step` (comma-separated),
    e.g. DFG_FAULT=kill_during_checkpoint:10,enospc_metrics:15. Never set outside tests and bench/soak.py."""
    return f"{point}:{step}" in os.environ.get("DFG_FAULT", "").split(",")


def disk_full_error(path: Path, e: OSError) -> Exception:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"disk full while writing {path}: free space or choose another runs dir")
    return e


def is_number(v) -> bool:
    """A JSON number as read back: int or float, not bool (True is an int in Python)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def atomic_write_bytes(path: Path, data: bytes, before_replace=None) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers see old or new, never half.
    A failure (disk full included) leaves the old file in place and removes the temp file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if before_replace:
            before_replace()
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        raise disk_full_error(path, e) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable across a power cut (best effort: some filesystems refuse)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=jsonable).encode())


def jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.ndarray,)):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def writable_problem(folder: str | os.PathLike) -> str | None:
    """Why files cannot be written into `folder`, or None when they can: checked with a real probe file,
    since permissions alone miss read-only mounts. Folders made for the probe are removed again, so a check
    that is followed by a failed one leaves nothing behind."""
    folder, made = Path(folder).absolute(), []
    try:
        made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"
    finally:
        for p in made:
            with contextlib.suppress(OSError):
                p.rmdir()
    return None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (finished child not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def newest_json_line(path: Path, wanted, hint: bytes = b"", block: int = 1 << 16) -> dict | None:
    """The last line of a JSON-lines file that holds an object for which wanted(row) is true, read backwards a
    block at a time (a 62 MB metrics file took 3 s to read whole). Lines without `hint` are skipped unparsed;
    a torn last line (a write in progress) and damaged lines are skipped, as full readers skip them."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    with f:
        pos, buf, seen_end = f.seek(0, 2), b"", False
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            buf = f.read(pos - start) + buf  # buf: the start of a line that began in an earlier block
            pos = start
            if not seen_end:
                cut = buf.rfind(b"\n")
                if cut < 0:
                    continue  # still inside the torn last line
                buf, seen_end = buf[:cut], True
            lines = buf.split(b"\n")
            buf = lines.pop(0) if pos > 0 else b""
            for line in reversed(lines):
                if hint not in line:
                    continue
                try:
                    row = json.loads(line)
                except ValueError:  # damaged bytes
                    continue
                if isinstance(row, dict) and wanted(row):
                    return row
    return None


@contextlib.contextmanager
def exclusive_lock(path: Path, make_folder: bool = False):
    """An exclusive flock on the file `path` (created if missing), waited for and held for the block; the OS
    releases it if the process dies. make_folder: create its folder when it is missing (also when another
    process's writability probe removed the empty folder just before)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        if not make_folder:
            raise
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
