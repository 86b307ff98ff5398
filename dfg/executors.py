"""Where a sweep's runs execute: `LocalExecutor` (a `python -m dfg worker` process per run, as many at a time
as GPUs, else --parallel) or `RayExecutor` (ray_executor.py: one Ray task per run). Both end in the worker's own
function (`work`)."""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import time
from typing import Callable

from .jobs import launching, spawn_worker, worker_busy
from .runstore import Run, as_record

DONE = ("finished", "diverged")   # outcomes: a re-launched sweep skips these (diverging again is certain)
STOP_GRACE_S = 120.0              # on Ctrl-C: how long stopped workers get to write their checkpoint


def action_for(run: Run) -> str:
    """What a (re-)launched sweep does with this run: new | skip (done) | busy (live worker) | resume.
    resume covers created, interrupted, stopped and failed runs (train resumes from a checkpoint if any)."""
    if not run.exists():
        return "new"
    status = run.status()
    if status.get("state") in DONE:
        return "skip"
    if worker_busy(run, status):  # a worker trains it or was launched (the app's Resume, another sweep)
        return "busy"
    return "resume"


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
    last = as_record(run.read_record("final.json").get("last"))
    if not error and (pid := worker_busy(run, s)):  # another process trains the run
        return {"run_id": run.id, "state": "running elsewhere", "top1": None, "seconds": seconds,
                "error": f"another process (pid {pid}) is training it; its outcome is not this sweep's"}
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

    def _spawn(self, run: Run, gpu: str | None) -> subprocess.Popen | None:
        """The run's worker, or None when another process (the app's Resume, another sweep) started one since
        the sweep looked."""
        with launching(run):  # the app's Resume waits, then sees it
            if worker_busy(run):
                return None
            # own session: Ctrl-C in the sweep does not kill it; the sweep asks it to checkpoint and stop
            return spawn_worker(run, {"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else None)

    def run(self, runs: list[Run], on_done: Callable[[dict], None]) -> list[dict]:
        queue, active, free, results = list(runs), {}, list(range(self.parallel)), []
        try:
            while queue or active:
                while queue and free:
                    slot, run = free.pop(0), queue.pop(0)
                    proc = self._spawn(run, self.gpus[slot] if self.gpus else None)
                    if proc is None:
                        free.append(slot)
                        results.append(outcome(run, 0.0))  # running elsewhere
                        on_done(results[-1])
                    else:
                        active[slot] = (run, proc, time.time())
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
            for run, proc in active:
                if proc.poll() is None:  # SIGTERM would only ask it to stop again
                    os.killpg(proc.pid, signal.SIGKILL)
                    run.clear_stop()  # no worker is left to honour it: the next launch would stop at once

    def close(self) -> None:
        pass


def make_executor(kind: str, address: str | None = None, parallel: int | None = None):
    if kind == "local":
        if address:
            raise ValueError("--address is for --executor ray; drop it or add --executor ray")
        return LocalExecutor(parallel)
    if kind == "ray":
        from .ray_executor import RayExecutor
        return RayExecutor(address, parallel)
    raise ValueError(f"--executor {kind!r} is invalid: choose local or ray")


# Every config field that `preflight` reads besides the method: `load_data`'s (dfg/loop.py; each of them changes
# what the data building accepts, e.g. n_max against a class's images, or the seed's majority draw with
# short_classes=error), the device, and the source model's (source_key, refit_needed). Configs that agree on
# all of them pass or fail preflight together. tests/test_sweep.py checks that the list covers those functions.
PREFLIGHT_FIELDS = ("dataset", "folder", "data_root", "download", "image_size", "grayscale", "backbone",
                    "imbalance", "ratio", "n_max", "num_majority", "majority", "val_fraction", "limit_test",
                    "short_classes", "seed", "device", "source", "head_refit", "allow_random_init",
                    "pretrain_steps", "source_per_class", "threads", "tf32",  # threads, tf32, deterministic:
                    "deterministic")                                          # the source cache key


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
