"""Run folders: the single source of truth shared by the CLI, the worker process and the app.

<runs>/<run_id>/ config.json, status.json (atomic), metrics.jsonl (append-only JSON lines: readable
while written; a torn last line is ignored), data.json, filter_weights/w_<step>.npz, checkpoint.pt."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

import numpy as np

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
HEARTBEAT_TIMEOUT_S = 60.0  # a "running" run whose heartbeat is older than this is reported interrupted
ACTIVE = ("created", "running")


class RunError(ValueError):
    """Bad run id, missing run folder or unreadable run record."""


def check_run_id(run_id: str) -> str:
    if not RUN_ID.match(run_id or "") or ".." in run_id:
        raise RunError(f"invalid run id {run_id!r}: use letters, digits, '.', '_' and '-' only "
                       "(no path separators, no '..')")
    return run_id


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers see old or new, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable).encode())


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.ndarray,)):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


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


class Run:
    """One run folder. Writers: the worker process only. Readers: anyone, at any time."""

    def __init__(self, root: str | Path, run_id: str):
        self.id = check_run_id(run_id)
        self.root = Path(root)
        self.path = self.root / run_id

    # -- creation -------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, run_id: str, config: dict) -> "Run":
        """Make the folder atomically (built in a temp folder, then renamed) with config + status."""
        run = cls(root, run_id)
        if run.path.exists():
            raise RunError(f"run {run_id!r} already exists in {run.root}; choose another id or resume it")
        run.root.mkdir(parents=True, exist_ok=True)
        tmp = run.root / f".creating-{run_id}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "filter_weights").mkdir(parents=True)
        try:
            atomic_write_json(tmp / "config.json", config)
            atomic_write_json(tmp / "status.json", {"state": "created", "step": 0, "created": time.time(),
                                                    "updated": time.time(), "host": socket.gethostname()})
            (tmp / "metrics.jsonl").touch()
            os.rename(tmp, run.path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return run

    def exists(self) -> bool:
        return (self.path / "config.json").exists()

    def require(self) -> "Run":
        if not self.exists():
            raise RunError(f"no run {self.id!r} in {self.root} (expected {self.path / 'config.json'})")
        return self

    # -- config / status ------------------------------------------------------------------
    def config(self) -> dict:
        return json.loads((self.path / "config.json").read_text())

    def raw_status(self) -> dict:
        try:
            return json.loads((self.path / "status.json").read_text())
        except (OSError, json.JSONDecodeError):
            return {"state": "unknown", "step": 0}

    def status(self) -> dict:
        """Status with liveness applied: an active run whose process is gone or silent is 'interrupted'."""
        s = self.raw_status()
        if s.get("state") == "created" and (self.path / "worker.pid").exists():
            pid = int((self.path / "worker.pid").read_text() or 0)
            if not pid_alive(pid) and self.raw_status().get("state") == "created":
                return {**s, "state": "failed", "error": "the worker exited before it started (see log.txt)"}
        if s.get("state") == "running":
            stale = time.time() - s.get("heartbeat", 0) > HEARTBEAT_TIMEOUT_S
            same_host = s.get("host") == socket.gethostname()
            if (same_host and not pid_alive(s.get("pid"))) or stale:
                s = {**s, "state": "interrupted", "error": s.get("error") or "worker stopped without a final status"}
        return s

    def set_status(self, **fields) -> dict:
        s = {**self.raw_status(), **fields, "updated": time.time()}
        atomic_write_json(self.path / "status.json", s)
        return s

    # -- metrics --------------------------------------------------------------------------
    def append_metrics(self, rows: list[dict]) -> None:
        """Append complete lines in one write, then fsync (a reader never sees an interleaved row)."""
        if not rows:
            return
        data = "".join(json.dumps(r, default=_jsonable) + "\n" for r in rows).encode()
        with open(self.path / "metrics.jsonl", "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self, offset: int = 0) -> tuple[list[dict], int]:
        """Rows appended since byte `offset`, and the new offset (only whole lines are consumed)."""
        try:
            with open(self.path / "metrics.jsonl", "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return [], offset
        end = data.rfind(b"\n") + 1
        rows = []
        for line in data[:end].splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # never produced by the writer; tolerate a hand-edited file
        return rows, offset + end

    def truncate_metrics_after(self, step: int) -> None:
        """On resume: drop rows past the checkpoint's step (they will be produced again)."""
        rows, _ = self.read_metrics()
        keep = [r for r in rows if r.get("step", 0) <= step]
        atomic_write_bytes(self.path / "metrics.jsonl",
                           "".join(json.dumps(r, default=_jsonable) + "\n" for r in keep).encode())
        for f in (self.path / "filter_weights").glob("w_*.npz"):
            if int(f.stem[2:]) > step:
                f.unlink()

    # -- filter weights -------------------------------------------------------------------
    def save_filter_weights(self, step: int, **arrays: np.ndarray) -> None:
        import io
        buf = io.BytesIO()
        np.savez(buf, step=np.array(step), **arrays)
        atomic_write_bytes(self.path / "filter_weights" / f"w_{step:08d}.npz", buf.getvalue())

    def filter_weight_steps(self) -> list[int]:
        return sorted(int(f.stem[2:]) for f in (self.path / "filter_weights").glob("w_*.npz"))

    def load_filter_weights(self, step: int) -> dict[str, np.ndarray]:
        with np.load(self.path / "filter_weights" / f"w_{step:08d}.npz") as z:
            return {k: z[k] for k in z.files}

    # -- misc records ---------------------------------------------------------------------
    def write_json(self, name: str, obj) -> None:
        atomic_write_json(self.path / name, obj)

    def read_json(self, name: str, default=None):
        try:
            return json.loads((self.path / name).read_text())
        except (OSError, json.JSONDecodeError):
            return default

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    def request_stop(self) -> None:
        (self.path / "STOP").touch()

    def stop_requested(self) -> bool:
        return (self.path / "STOP").exists()

    def clear_stop(self) -> None:
        (self.path / "STOP").unlink(missing_ok=True)


def list_runs(root: str | Path) -> list[Run]:
    """Every run folder under root, newest first (half-made temp folders are skipped)."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [Run(root, p.name) for p in root.iterdir()
            if p.is_dir() and RUN_ID.match(p.name) and (p / "config.json").exists()]
    return sorted(runs, key=lambda r: r.raw_status().get("created", 0), reverse=True)
