"""Where a sweep's runs execute: `LocalExecutor` (a `python -m dfg worker` process per run, as many at a time
as GPUs, else --parallel) or `RayExecutor` (one Ray task per run). Both end in the worker's own function."""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from .runstore import Run, pid_alive

DONE = ("finished", "diverged")   # outcomes: a re-launched sweep skips these (diverging again is certain)
REPO_ROOT = str(Path(__file__).resolve().parent.parent)
STOP_GRACE_S = 120.0              # on Ctrl-C: how long stopped workers get to write their checkpoint


def action_for(run: Run) -> str:
    """What a (re-)launched sweep does with this run: new | skip (done) | busy (live worker) | resume.
    resume covers created, interrupted, stopped and failed runs (train resumes from a checkpoint if any)."""
    if not run.exists():
        return "new"
    state = run.status().get("state")
    if state in DONE:
        return "skip"
    if state == "running" or (state == "created" and _worker_alive(run)):
        return "busy"
    return "resume"


def _worker_alive(run: Run) -> bool:
    try:
        return pid_alive(int((run.path / "worker.pid").read_text() or 0))
    except (OSError, ValueError):
        return False


def work(runs_dir: str, run_id: str) -> dict:
    """Train one prepared run folder in this process — exactly what `python -m dfg worker` runs (start, or
    resume from its checkpoint; failures are recorded in status.json) — and return its final status."""
    from .cli import cmd_worker

    run = Run(runs_dir, run_id).require()
    with open(run.path / "log.txt", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        cmd_worker(argparse.Namespace(run=run_id, runs_dir=str(runs_dir)))
    return Run(runs_dir, run_id).status()


def outcome(run: Run, seconds: float, error: str | None = None) -> dict:
    """One finished task, as reported per line and in the sweep summary."""
    s = run.status()
    last = (run.read_json("final.json") or {}).get("last") or {}
    state = s.get("state") if not error else "failed"
    return {"run_id": run.id, "state": state, "top1": last.get("top1") if state == "finished" else None,
            "error": error or (s.get("error") if state != "finished" else None), "seconds": seconds}


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _visible_gpus() -> list[str]:
    """CUDA device ids a child may be pinned to ([] without CUDA); honours CUDA_VISIBLE_DEVICES."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed or [str(i) for i in range(torch.cuda.device_count())]


class LocalExecutor:
    """A worker process per run on this machine: one per GPU (pinned with CUDA_VISIBLE_DEVICES) when CUDA
    is present, else `parallel` at a time (default 1), each with cores // parallel torch threads."""

    name = "local"

    def __init__(self, parallel: int | None = None):
        self.gpus = _visible_gpus()
        self.parallel = len(self.gpus) or max(1, parallel or 1)
        self.threads = max(1, cpu_cores() // self.parallel)

    def describe(self) -> str:
        where = f"{len(self.gpus)} GPU(s)" if self.gpus else f"CPU, {self.threads} thread(s) each"
        return f"local executor: {self.parallel} run(s) at a time ({where})"

    def _spawn(self, run: Run, gpu: str | None) -> subprocess.Popen:
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        with open(run.path / "log.txt", "ab") as log:
            # own session: Ctrl-C in the sweep does not kill it; the sweep asks it to checkpoint and stop
            proc = subprocess.Popen([sys.executable, "-m", "dfg", "worker", run.id, "--runs-dir", str(run.root)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        (run.path / "worker.pid").write_text(str(proc.pid))
        return proc

    def run(self, runs: list[Run], on_done: Callable[[dict], None]) -> list[dict]:
        queue, active, free, results = list(runs), {}, list(range(self.parallel)), []
        try:
            while queue or active:
                while queue and free:
                    slot, run = free.pop(0), queue.pop(0)
                    active[slot] = (run, self._spawn(run, self.gpus[slot] if self.gpus else None), time.time())
                time.sleep(0.2)
                for slot, (run, proc, t0) in list(active.items()):
                    if proc.poll() is None:
                        continue
                    del active[slot]
                    free.append(slot)
                    results.append(outcome(run, time.time() - t0))
                    on_done(results[-1])
        except KeyboardInterrupt:
            self._stop_all([(run, proc) for run, proc, _ in active.values()])
            raise
        return results

    @staticmethod
    def _stop_all(active: list[tuple[Run, subprocess.Popen]]) -> None:
        """Ask each live worker to checkpoint and stop; kill those that don't within STOP_GRACE_S."""
        for run, _ in active:
            run.request_stop()
        deadline = time.time() + STOP_GRACE_S
        try:
            for _, proc in active:
                proc.wait(timeout=max(0.1, deadline - time.time()))
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            for _, proc in active:
                if proc.poll() is None:  # SIGTERM would only ask it to stop again
                    os.killpg(proc.pid, signal.SIGKILL)

    def close(self) -> None:
        pass


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
            ray.init(address=self.address, log_to_driver=False)
        else:  # a local instance; its workers import dfg from this checkout
            path = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
            ray.init(include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}})
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
                        error = f"ray task failed: {type(e).__name__}: {e}".splitlines()[0]
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
            ray.wait(live, num_returns=len(live), timeout=STOP_GRACE_S)
            raise
        return results

    def close(self) -> None:
        self.ray.shutdown()  # stops the local instance; only disconnects from a cluster


def make_executor(kind: str, address: str | None = None, parallel: int | None = None):
    if kind == "local":
        if address:
            raise ValueError("--address is for --executor ray; drop it or add --executor ray")
        return LocalExecutor(parallel)
    if kind == "ray":
        return RayExecutor(address, parallel)
    raise ValueError(f"--executor {kind!r} is invalid: choose local or ray")


# Every config field that `preflight` reads besides the method: `load_data`'s (dfg/loop.py; each of them changes
# what the data building accepts, e.g. n_max against a class's images, or the seed's majority draw with
# short_classes=error), the device, and the source model's (source_key, refit_needed). Configs that agree on
# all of them pass or fail preflight together. tests/test_sweep.py checks that the list covers those functions.
PREFLIGHT_FIELDS = ("dataset", "folder", "data_root", "download", "image_size", "grayscale", "backbone",
                    "imbalance", "ratio", "n_max", "num_majority", "majority", "val_fraction", "limit_test",
                    "short_classes", "seed", "device", "source", "head_refit", "allow_random_init",
                    "pretrain_steps", "source_per_class", "threads")  # threads: the source cache key


def preflight_all(configs: list[tuple[str, object]], log=print) -> None:
    """Check data files and source models once per distinct data setting of (run id, Config) pairs, before
    any run folder exists: a missing dataset or an impossible imbalance fails the sweep here, not in its runs."""
    from .preflight import preflight
    from .methods import METHODS

    groups: dict[tuple, tuple] = {}
    for run_id, cfg in configs:
        key = tuple(getattr(cfg, f) for f in PREFLIGHT_FIELDS)
        if key not in groups or METHODS[cfg.method].from_source:
            groups[key] = (run_id, cfg)  # prefer a method that needs the source model: checks both
    for run_id, cfg in groups.values():
        try:
            preflight(cfg)
        except Exception:
            log(f"preflight failed for {run_id}; no run was started")
            raise
    log(f"preflight: data and source models present for {len(groups)} data setting(s)")


def reporter(total: int, log=print) -> Callable[[dict], None]:
    """on_done callback printing one line per finished run: [i/total] id state top1 (seconds)."""
    seen: list[dict] = []

    def report(r: dict) -> None:
        seen.append(r)
        log(f"[{len(seen)}/{total}] {r['run_id']}  {r['state']}"
            + (f"  top1 {100 * r['top1']:.2f}%" if r["top1"] is not None else "")
            + (f"  error: {r['error']}" if r["error"] else "") + f"  ({r['seconds']:.1f} s)")
    return report
