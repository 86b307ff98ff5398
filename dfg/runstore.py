"""Run folders: the single source of truth shared by the CLI, the worker process and the app.

<runs>/<run_id>/ config.json, status.json (atomic), metrics.jsonl (append-only JSON lines, never rewritten
while a run lives: readers' offsets stay valid), data.json, filter_weights/w_<step>.npz, checkpoint.pt."""
from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

from .fileio import DiskFullError, atomic_write_bytes, atomic_write_json, disk_full_error, is_number, jsonable, \
    pid_alive
from .runlog import RunError, RunRecords

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")  # \Z: `$` would also pass a final "\n"
HEARTBEAT_TIMEOUT_S = 60.0  # a "running" run whose heartbeat is older than this is reported interrupted
HEARTBEAT_EVERY_S = 5.0     # the writer touches <run>/heartbeat this often, even during long setups
ACTIVE = ("created", "running")
# status.json fields that code reads, with their JSON types: a hand-edited value of another type is dropped
# (readers then see the field as absent) rather than breaking `runs`, liveness or the app
STATUS_TYPES = {"state": str, "step": int, "total_steps": int, "pid": int, "error": str, "host": str,
                "device": str, "created": float, "updated": float, "heartbeat": float, "started": float,
                "finished": float, "steps_per_s": float, "top1": float}


def _typed_status(s: dict) -> dict:
    def ok(v, kind) -> bool:
        if kind is float:
            return is_number(v)
        return isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    return {k: v for k, v in s.items() if k not in STATUS_TYPES or v is None or ok(v, STATUS_TYPES[k])}


_DAMAGED = "the run record is damaged: put back a copy of config.json, or delete the run's folder to start it anew"


class RunBusyError(RunError):
    """Another live process is already training this run."""


def as_record(value) -> dict:
    """A JSON object from a run's files, or {} for anything else (missing, or hand-edited into another type)."""
    return value if isinstance(value, dict) else {}


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID.match(run_id) or ".." in run_id:
        raise RunError(f"invalid run id {run_id!r}: use 1 to 128 letters, digits, '.', '_' and '-', starting "
                       "with a letter or digit (no path separators, no '..')")
    return run_id


class Run(RunRecords):
    """One run folder. Writers: the worker process only (held by `writer()`). Readers: anyone, any time."""

    def __init__(self, root: str | Path, run_id: str):
        self.id = check_run_id(run_id)
        self.root = Path(root)
        self.path = self.root / run_id
        self._config: dict | None = None  # config.json is written once, at creation: parsed once per Run

    # -- creation -------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, run_id: str, config: dict) -> "Run":
        """Make the folder atomically (built in a temp folder, then renamed) with config + status."""
        run = cls(root, run_id)
        if run.path.exists():
            raise RunError(f"run {run_id!r} already exists in {run.root}; choose another id or resume it")
        run.root.mkdir(parents=True, exist_ok=True)
        for old in run.root.glob(".creating-*"):  # left by a process killed mid-create
            if not pid_alive(int(old.name.rsplit("-", 1)[-1]) if old.name.rsplit("-", 1)[-1].isdigit() else 0):
                shutil.rmtree(old, ignore_errors=True)
        tmp = run.root / f".creating-{run_id}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            (tmp / "filter_weights").mkdir(parents=True)
            atomic_write_json(tmp / "config.json", config)
            atomic_write_json(tmp / "status.json", {"state": "created", "step": 0, "created": time.time(),
                                                    "updated": time.time(), "host": socket.gethostname()})
            (tmp / "metrics.jsonl").touch()
            os.rename(tmp, run.path)
        except OSError as e:
            raise disk_full_error(run.path, e) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return run

    def identity(self) -> float | None:
        """Which run this is beyond its path: its creation time, which status.json keeps for the run's life
        (config.json may be rewritten: `resume --set`). A run deleted and made again under the same id has
        another; None when status.json does not say."""
        created = self.raw_status().get("created")
        return created if is_number(created) else None

    def exists(self) -> bool:
        return (self.path / "config.json").exists()

    def require(self) -> "Run":
        if not self.exists():
            raise RunError(f"no run {self.id!r} in {self.root} (expected {self.path / 'config.json'})")
        return self

    # -- the single writer ------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self):
        """Hold the run for training: an exclusive lock (released by the OS if the process dies, so a
        killed run can be resumed at once), stale temp files from a killed write removed, and a heartbeat
        file touched every few seconds so readers can tell a live run from a dead one."""
        self.require()
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunBusyError(f"run {self.id!r} is already being trained by another process (pid "
                               f"{self.raw_status().get('pid')}); wait for it or stop it first") from None
        for f in [*self.path.glob(".*.tmp*"), *self.path.glob("filter_weights/.*.tmp*")]:
            f.unlink(missing_ok=True)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(stop,), daemon=True, name=f"heartbeat-{self.id}")
        self._beat_once()
        beat.start()
        try:
            yield self
        finally:
            stop.set()
            beat.join()
            os.close(fd)  # releases the lock

    def _beat_once(self) -> None:
        with contextlib.suppress(OSError):
            (self.path / "heartbeat").touch()

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_EVERY_S):
            self._beat_once()

    def heartbeat(self) -> float:
        """Last sign of life of the writer (the newer of status.json's heartbeat and the heartbeat file)."""
        try:
            touched = (self.path / "heartbeat").stat().st_mtime
        except OSError:
            touched = 0.0
        return max(self.raw_status().get("heartbeat") or 0.0, touched)

    # -- config / status ------------------------------------------------------------------
    def config(self) -> dict:
        """config.json as plain data (it is parsed, never executed; `config.from_dict` checks it). A copy of
        this Run's first successful parse: callers may change it."""
        if self._config is not None:
            return copy.deepcopy(self._config)
        try:
            d = json.loads((self.path / "config.json").read_text())
        except FileNotFoundError:
            raise RunError(f"no run {self.id!r} in {self.root} (expected {self.path / 'config.json'})") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RunError(f"{self.path / 'config.json'} is not valid JSON ({e}); {_DAMAGED}") from None
        if not isinstance(d, dict):
            raise RunError(f"{self.path / 'config.json'} must hold a JSON object of config fields; {_DAMAGED}")
        self._config = d
        return copy.deepcopy(d)

    def raw_status(self) -> dict:
        try:
            s = json.loads((self.path / "status.json").read_text())
            return _typed_status(s) if isinstance(s, dict) else {"state": "unknown", "step": 0}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {"state": "unknown", "step": 0}

    def status(self) -> dict:
        """Status with liveness applied: an active run whose process is gone or silent is 'interrupted'."""
        s = self.raw_status()
        if s.get("state") == "created" and (self.path / "worker.pid").exists():
            try:
                pid = int((self.path / "worker.pid").read_text() or 0)
            except (OSError, ValueError):
                pid = 0
            if not pid_alive(pid) and self.raw_status().get("state") == "created":
                return {**s, "state": "failed", "error": "the worker exited before it started (see log.txt)"}
        if s.get("state") == "running":
            beat = self.heartbeat()
            stale = time.time() - beat > HEARTBEAT_TIMEOUT_S
            same_host = s.get("host") == socket.gethostname()
            if (same_host and not pid_alive(s.get("pid"))) or stale:
                s = {**s, "state": "interrupted", "heartbeat": beat,
                     "error": s.get("error") or "the worker stopped without a final status (killed or crashed); "
                                                "resume continues from the last checkpoint"}
        return s

    def set_status(self, **fields) -> dict:
        s = {**self.raw_status(), **fields, "updated": time.time()}
        data = json.dumps(s, indent=2, sort_keys=True, default=jsonable).encode()
        try:
            atomic_write_bytes(self.path / "status.json", data)
        except DiskFullError:
            # no room for a second copy: overwrite in place (the old file's blocks are reused), so the
            # final status — often the disk-full failure itself — still reaches the readers
            with open(self.path / "status.json", "r+b") as f:
                f.truncate(0)
                f.write(data)
        return s

    # -- misc records ---------------------------------------------------------------------
    def write_json(self, name: str, obj) -> None:
        atomic_write_json(self.path / name, obj)

    def read_json(self, name: str, default=None):
        try:
            return json.loads((self.path / name).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return default

    def read_record(self, name: str) -> dict:
        """A JSON object the run wrote (data.json, final.json): {} when missing, unreadable or, hand-edited,
        not an object, so one damaged run cannot break a page that lists every run."""
        return as_record(self.read_json(name))

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    def request_stop(self) -> None:
        (self.path / "STOP").touch()

    def stop_requested(self) -> bool:
        return (self.path / "STOP").exists()

    def clear_stop(self) -> None:
        (self.path / "STOP").unlink(missing_ok=True)


def readable_runs(runs: list[Run]) -> tuple[list[Run], list[str]]:
    """(the runs whose config.json reads as a JSON object, one message per run whose does not): views that
    compare runs use the first and name the second, instead of failing on one damaged folder."""
    ok, bad = [], []
    for run in runs:
        try:
            run.config()
            ok.append(run)
        except RunError as e:
            bad.append(str(e))
    return ok, bad


def list_runs(root: str | Path) -> list[Run]:
    """Every run folder under root, newest first (half-made temp folders are skipped)."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [Run(root, p.name) for p in root.iterdir()
            if p.is_dir() and RUN_ID.match(p.name) and ".." not in p.name and (p / "config.json").exists()]
    return sorted(runs, key=lambda r: r.raw_status().get("created") or 0, reverse=True)
