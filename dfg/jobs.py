"""Background runs: a detached worker process per run that survives the app (and its restarts)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .runstore import Run


def launch(run: Run) -> int:
    """Start `python -m dfg worker <run>` in its own session; output goes to <run>/log.txt."""
    run.require()
    log = open(run.path / "log.txt", "ab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else root
    proc = subprocess.Popen([sys.executable, "-m", "dfg", "worker", run.id, "--runs-dir", str(run.root)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env, cwd=os.getcwd())
    log.close()
    (run.path / "worker.pid").write_text(str(proc.pid))  # status.json stays the worker's alone
    return proc.pid


def stop(run: Run) -> None:
    """Ask the worker to checkpoint and stop at its next step."""
    run.request_stop()
