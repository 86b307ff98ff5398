"""Background runs: a detached worker process per run that survives the app (and its restarts)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from .fileio import exclusive_lock, pid_alive, writable_problem
from .runstore import Run, RunBusyError, RunError

# The workers this process started. Each is polled at the next launch, which reaps those that have ended
# (a finished child stays a zombie until its parent waits on it); holding them also keeps Python from
# warning that a Popen object was dropped while its process still ran.
_children: list[subprocess.Popen] = []
REPO_ROOT = str(Path(__file__).resolve().parent.parent)


def launch(run: Run) -> int:
    """Start `python -m dfg worker <run>` in its own session; output goes to <run>/log.txt.
    The worker resumes from the run's checkpoint when it has one. A run that is still live is refused."""
    run.require()
    check_writable(run)
    with launching(run):  # two launches at once (a double click, two tabs): the second sees the first's worker
        s = run.status()
        if s.get("state") == "running":
            raise RunBusyError(f"run {run.id!r} is still running (pid {s.get('pid')}); stop it before resuming")
        if pid := starting_worker(run):  # started, not yet training (importing torch takes seconds)
            raise RunBusyError(f"run {run.id!r} is starting (worker pid {pid}); wait for it")
        run.clear_stop()  # an old request; one made from now on (even before the worker is up) is honoured
        return spawn_worker(run).pid


def pythonpath() -> str:
    """PYTHONPATH for a worker process: this checkout first, so it imports the same dfg."""
    return os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)


def spawn_worker(run: Run, env: dict | None = None) -> subprocess.Popen:
    """Start `python -m dfg worker <run>` in its own session (Ctrl-C in this process does not reach it; it is
    asked to checkpoint and stop instead), its output appended to <run>/log.txt and its pid in worker.pid
    (status.json stays the worker's alone). The caller holds `launching(run)` and found no busy worker."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath(), **(env or {})}
    with open(run.path / "log.txt", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dfg", "worker", run.id, "--runs-dir", str(run.root)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    _children[:] = [p for p in _children if p.poll() is None] + [proc]
    (run.path / "worker.pid").write_text(str(proc.pid))
    return proc


def launching(run: Run):
    """Held while a worker for the run is checked for and started (the app's launch, a sweep's spawn): an
    exclusive lock on <run>/.launch, apart from the trainer's .lock, which the worker takes seconds later."""
    return exclusive_lock(run.path / ".launch")


def worker_busy(run: Run, status: dict | None = None) -> int:
    """The pid of a worker that trains the run (state running) or was launched and has not reported yet, or 0:
    another launch must not start a second one."""
    status = run.status() if status is None else status
    if status.get("state") == "running":
        return int(status.get("pid") or -1)
    return starting_worker(run, status)


def starting_worker(run: Run, status: dict | None = None) -> int:
    """The pid of a worker launched after the run's last status write (status.json is the worker's alone, so
    until the worker reports, a resumed run still reads "stopped" or "failed") when it is still alive, else 0.
    An older worker.pid names a worker that has reported since: its pid may belong to another process now."""
    path = run.path / "worker.pid"
    status = run.raw_status() if status is None else status
    try:
        launched, pid = path.stat().st_mtime, int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0
    return pid if launched > float(status.get("updated") or 0) and pid_alive(pid) else 0


def check_runs_folder(root: str | Path) -> None:
    """New runs (and a sweep's tables) are written under root: say so plainly when they cannot be."""
    problem = writable_problem(root)
    if problem:
        raise RunError(f"cannot write runs into {root} ({problem}); choose a runs folder you can write to "
                       "(--runs-dir)")


def check_writable(run: Run) -> None:
    """Training writes into the run folder: say so plainly when it cannot (a read-only mount)."""
    problem = writable_problem(run.path)
    if problem:
        raise RunError(f"cannot write into the run folder {run.path} ({problem}); copy the run to a runs "
                       "folder you can write to and resume it there (--runs-dir)")


RESERVED_IDS = ("sweeps",)  # folders the runs folder holds beside its runs


def new_run_id(cfg, root: str | Path) -> str:
    """<yyyymmdd-hhmmss>-<preset>-<method>-s<seed>, with -2, -3... when that id is taken (two starts in one
    second, several launches at once)."""
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.preset}-{cfg.method}-s{cfg.seed}"
    rid, n = base, 1
    while (Path(root) / rid).exists():
        n += 1
        rid = f"{base}-{n}"
    return rid


def create_checked(cfg, runs_dir: str | Path, run_id: str | None = None):
    """Check everything that can be checked (run id, config, device, data files, source) before a run
    folder exists, then create the run. Returns (run, data bundle). Bad input raises and leaves no folder.
    run_id None: new_run_id, taking the next free suffix when another process takes that id meanwhile."""
    from .preflight import preflight

    run = Run(runs_dir, new_run_id(cfg, runs_dir) if run_id is None else run_id)  # checks the id
    if run.id in RESERVED_IDS:
        raise RunError(f"run id {run.id!r} is the name of the runs folder's {run.id}/ folder; choose another id")
    if run_id is not None and run.path.exists():  # an automatic id taken meanwhile gets a suffix below
        what = "" if run.exists() else " as a folder that is not a run (no config.json)"
        raise RunError(f"run {run.id!r} already exists in {run.root}{what}; choose another id"
                       + (" or resume it" if not what else ""))
    check_runs_folder(run.root)
    data = preflight(cfg)
    while True:
        try:
            return Run.create(runs_dir, run.id, cfg.to_dict()), data
        except RunError:
            if run_id is not None or not run.path.exists():
                raise
            run = Run(runs_dir, new_run_id(cfg, runs_dir))


def submit(cfg, runs_dir: str | Path, run_id: str | None = None) -> Run:
    """`create_checked`, then launch the run's background worker."""
    run, _ = create_checked(cfg, runs_dir, run_id)
    launch(run)
    return run


def stop(run: Run) -> None:
    """Ask the worker to checkpoint and stop at its next step."""
    run.request_stop()


@contextlib.contextmanager
def on_first_sigterm(action: Callable[[], None]):
    """While the block runs, the first SIGTERM calls `action` (in the main thread, between two bytecodes) and
    puts back the handler found on entry, which gets a second SIGTERM: the default ends the process at once;
    Ray's (its tasks run on a worker's main thread) raises SystemExit. Only the main thread can install a
    handler; in any other thread SIGTERM keeps what it had."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    restore = previous if previous is not None else signal.SIG_DFL

    def on_term(signum, frame):
        signal.signal(signal.SIGTERM, restore)
        action()

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, restore)


_SIGTERMED: set[str] = set()  # run folders this process was told to stop by SIGTERM


def stop_on_sigterm(run: Run):
    """While training: SIGTERM (docker stop, a job scheduler's pre-emption, `kill`) asks for a stop as the
    STOP file does: the step ends, a checkpoint is written and the run is recorded as stopped, not lost
    back to its last checkpoint. sigterm_stopped(run) tells the command line why it stopped."""
    def request() -> None:
        _SIGTERMED.add(str(run.path))
        with contextlib.suppress(OSError):  # a vanished folder or a full disk: the second SIGTERM still ends it
            run.request_stop()
    return on_first_sigterm(request)


def sigterm_stopped(run: Run) -> bool:
    """Whether this process's training of `run` was stopped by SIGTERM (not by a Stop or a STOP file)."""
    return str(run.path) in _SIGTERMED


def sigterm_as_interrupt():
    """While a sweep waits on its workers: SIGTERM (`kill`, a scheduler's pre-emption) raises KeyboardInterrupt
    as Ctrl-C does, so the workers are asked to checkpoint and stop and the tables are written; the workers run
    in their own sessions and would otherwise train on unwatched."""
    def interrupt() -> None:
        raise KeyboardInterrupt
    return on_first_sigterm(interrupt)
