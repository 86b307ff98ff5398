"""`RayExecutor`: a sweep's runs as Ray tasks, on a local Ray instance or an existing cluster (--address),
each task running the worker's own function on a run folder that every node sees."""
from __future__ import annotations

import os
import re
import time
from typing import Callable

from .executors import DONE, STOP_GRACE_S, outcome, work
from .jobs import pythonpath
from .runstore import Run, RunError


class RayExecutor:
    """One Ray task per run, calling `work` (the worker's function). `address` (or env RAY_ADDRESS) joins
    a cluster; none starts a local Ray instance, shut down at the end. The runs folder (and data_root) must
    be storage every Ray worker sees at the same path, and `dfg` must be importable on every node."""

    name = "ray"

    def __init__(self, address: str | None = None, parallel: int | None = None):
        try:
            import ray
        except ImportError:
            raise RuntimeError('--executor ray needs Ray, which is not installed: pip install "ray>=2.9" '
                               "(or use --executor local)") from None
        self.ray = ray
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        if self.address:
            _check_reachable(self.address)
            ray.init(address=self.address, log_to_driver=False)
        else:  # a local instance; its workers import dfg from this checkout
            ray.init(include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": pythonpath(), "PYTHONUNBUFFERED": "1"}})
        res = ray.cluster_resources()
        self.gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
        node_cpus = max([int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")] or [1])
        if self.gpus:
            self.threads = max(1, min(node_cpus, cpus // self.gpus))
            self.options = {"num_gpus": 1}
        else:  # default: one thread per run, as many runs as the cluster has CPUs
            self.threads = max(1, min(node_cpus, cpus // max(1, parallel or cpus)))
            self.options = {"num_cpus": self.threads}

    def describe(self) -> str:
        where = f"{self.gpus} GPU(s), 1 per run" if self.gpus else f"{self.threads} CPU(s) per run"
        return f"ray executor ({self.address or 'local instance'}): {where}"

    def run(self, runs: list[Run], on_done: Callable[[dict], None]) -> list[dict]:
        ray = self.ray
        task = ray.remote(work).options(max_retries=0, **self.options)
        refs = {task.remote(str(run.root.resolve()), run.id): (run, time.time()) for run in runs}
        pending, results = list(refs), []
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    run, t0 = refs[ref]
                    error = None
                    try:
                        ray.get(ref)
                    except Exception as e:  # the task itself died (worker killed, node lost, ...)
                        error = ray_error(e)
                        if run.status().get("state") not in DONE:
                            run.set_status(state="failed", error=error)
                    results.append(outcome(run, time.time() - t0, error))
                    on_done(results[-1])
        except KeyboardInterrupt:  # running tasks checkpoint and stop; queued ones are cancelled
            live = []
            for ref in pending:
                run = refs[ref][0]
                if run.status().get("state") == "running":
                    run.request_stop()
                    live.append(ref)
                else:
                    ray.cancel(ref)
            _, late = ray.wait(live, num_returns=len(live), timeout=STOP_GRACE_S)
            for ref in late:  # not stopped within the grace time: ended, and their stop requests withdrawn
                ray.cancel(ref, force=True)
                refs[ref][0].clear_stop()
            raise
        return results

    def close(self) -> None:
        self.ray.shutdown()  # stops the local instance; only disconnects from a cluster


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """ray.init waits without end on an address where nothing answers: try a TCP connection first, for the
    host:port forms (ray://host:port, host:port; 'auto' and 'local' are Ray's own lookups)."""
    import socket
    from urllib.parse import urlsplit

    if address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        return  # a form we do not know: Ray judges it
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise RuntimeError(f"--address {address}: nothing answers at {host}:{port} ({e}); check the address and "
                           "that the Ray cluster is up (ray status on its head node)") from None


def ray_error(e: BaseException) -> str:
    """One line naming why a Ray task failed: the exception raised inside the task (a RayTaskError's cause)
    rather than Ray's header line with its colour codes and worker address."""
    cause = getattr(e, "cause", None) or e
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(cause)).strip().splitlines()
    error = f"ray task failed: {type(cause).__name__}: {text[0] if text else ''}"
    if isinstance(cause, RunError):  # the task could not find or read the run folder
        error += " (the runs folder must be storage that every Ray node sees at the same path)"
    return error
