"""Soak test: N tiny background runs SIGKILLed and resumed at random for M minutes.

    python bench/soak.py --runs 2 --minutes 3

Each run has a fixed seed and an uninterrupted reference run (trained first). Kills land at random
moments (setup, mid-step, mid-write) and, one time in four, inside a checkpoint write (DFG_FAULT hook).
After every kill the run must read as `interrupted`, its checkpoint must load and be at most one
checkpoint interval behind its metric rows. A finished run is compared with its reference (every
metric row and the final eval, wall-clock fields aside) and started again under a new id. When time
is up the runs in flight are resumed to the end and checked too. Last line is machine-readable."""
from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dfg.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from dfg.config import make_config  # noqa: E402
from dfg.fileio import pid_alive  # noqa: E402
from dfg.jobs import launch  # noqa: E402
from dfg.runstore import Run  # noqa: E402

VOLATILE = ("time", "steps_per_s")


def tiny(data_root: str, seed: int, steps: int) -> dict:
    return dict(steps=steps, ckpt_every=5, log_every=5, eval_every=20, pretrain_steps=50, head_refit_steps=10,
                limit_test=200, source_per_class=100, threads=1, seed=seed, data_root=data_root)


def strip(rows):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def wait(predicate, timeout=300.0) -> bool:
    t0 = time.time()
    while not predicate():
        if time.time() - t0 > timeout:
            return False
        time.sleep(0.05)
    return True


class Soak:
    def __init__(self, root: Path, runs: int, steps: int, rng: random.Random):
        self.root, self.steps, self.rng = root, steps, rng
        self.data_root = str(root / "data")
        self.counts = dict(kills=0, resumes=0, lost_rows=0, duplicate_rows=0, corrupt_checkpoints=0,
                           final_mismatch=0, checkpoint_write_kills=0, completed=0, status_not_interrupted=0,
                           killed_before_start=0, max_redone_steps=0)
        self.cfgs = {s: make_config("demo", tiny(self.data_root, s, steps)) for s in range(runs)}
        self.refs: dict[int, Run] = {}
        self.live: dict[int, tuple[Run, int]] = {}  # seed -> (run, worker pid)
        self.cycle = 0

    def expected_train_steps(self) -> list[int]:
        return [s for s in range(1, self.steps + 1) if s % 5 == 0 or s == self.steps]

    def references(self) -> None:
        """One uninterrupted run per seed (the first one also pretrains the shared source model)."""
        first = Run.create(self.root / "runs", "ref-s0", self.cfgs[0].to_dict())
        pid = launch(first)
        wait(lambda: not pid_alive(pid), 600)
        self.refs[0] = first
        pids = {}
        for seed, cfg in self.cfgs.items():
            if seed:
                self.refs[seed] = Run.create(self.root / "runs", f"ref-s{seed}", cfg.to_dict())
                pids[seed] = launch(self.refs[seed])
        wait(lambda: not any(pid_alive(p) for p in pids.values()), 600)
        for seed, ref in self.refs.items():
            assert ref.status()["state"] == "finished", (seed, ref.status(), (ref.path / "log.txt").read_text())

    def start(self, seed: int) -> None:
        self.cycle += 1
        run = Run.create(self.root / "runs", f"soak-s{seed}-{self.cycle}", self.cfgs[seed].to_dict())
        self.live[seed] = (run, launch(run))

    def kill(self, seed: int) -> None:
        run, pid = self.live[seed]
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            self.counts["kills"] += 1
        wait(lambda: not pid_alive(pid))
        self.after_death(seed)

    def after_death(self, seed: int) -> None:
        """The worker is gone: check the folder, then finish it (compare) or resume it."""
        run, _ = self.live[seed]
        state = run.status()["state"]
        if state == "finished":
            self.check_finished(seed)
            return
        if state == "failed" and run.raw_status()["state"] == "created":
            self.counts["killed_before_start"] += 1  # "the worker exited before it started": also resumable
        elif state != "interrupted":
            self.counts["status_not_interrupted"] += 1
            print(f"  {run.id}: state {state!r} after a kill: {run.status().get('error')}", flush=True)
        rows = [r for r in run.read_metrics()[0] if r["kind"] == "train"]
        try:
            ckpt_step = load_checkpoint(run.checkpoint_path)["step"]
        except CheckpointError as e:
            ckpt_step = 0
            if run.checkpoint_path.exists():
                self.counts["corrupt_checkpoints"] += 1
                print(f"  {run.id}: {e}", flush=True)
        if rows:
            self.counts["max_redone_steps"] = max(self.counts["max_redone_steps"], rows[-1]["step"] - ckpt_step)
        env_fault = None
        if self.rng.random() < 0.25:  # aim the next kill inside a checkpoint write
            target = (ckpt_step // 5 + self.rng.randint(1, 3)) * 5
            if target < self.steps:
                env_fault = f"kill_during_checkpoint:{target}"
        if env_fault:
            os.environ["DFG_FAULT"] = env_fault
        try:
            self.live[seed] = (run, launch(run))
        finally:
            os.environ.pop("DFG_FAULT", None)
        self.counts["resumes"] += 1
        if env_fault:
            pid = self.live[seed][1]
            if wait(lambda: not pid_alive(pid), 120) and run.status()["state"] != "finished":
                self.counts["kills"] += 1
                self.counts["checkpoint_write_kills"] += 1
                self.after_death(seed)

    def check_finished(self, seed: int) -> None:
        run, _ = self.live.pop(seed)
        ref = self.refs[seed]
        rows = run.read_metrics()[0]
        steps = [r["step"] for r in rows if r["kind"] == "train"]
        expected = self.expected_train_steps()
        self.counts["duplicate_rows"] += len(steps) - len(set(steps))
        self.counts["lost_rows"] += len(set(expected) - set(steps))
        raw = (run.path / "metrics.jsonl").read_bytes()
        self.counts["lost_rows"] += raw.count(b"\n") - len(rows)  # lines that do not parse
        same = strip(rows) == strip(ref.read_metrics()[0]) and \
            strip([run.read_json("final.json")["last"]]) == strip([ref.read_json("final.json")["last"]])
        self.counts["final_mismatch"] += not same
        self.counts["completed"] += 1
        print(f"  {run.id}: finished, {len(steps)} train rows, {'same as' if same else 'DIFFERENT from'} "
              f"reference (top1 {run.status().get('top1')})", flush=True)

    def loop(self, minutes: float) -> None:
        end = time.time() + 60 * minutes
        for seed in self.cfgs:
            self.start(seed)
        while time.time() < end:
            time.sleep(self.rng.uniform(0.5, 8.0))
            for seed in list(self.live):  # finished ones are checked and started again
                run, pid = self.live[seed]
                if not pid_alive(pid):
                    self.after_death(seed)
                    if seed not in self.live:
                        self.start(seed)
            if time.time() < end and self.live:
                self.kill(self.rng.choice(sorted(self.live)))
        for seed in list(self.live):  # time is up: let every run finish (resuming as needed)
            while seed in self.live:
                run, pid = self.live[seed]
                wait(lambda: not pid_alive(pid), 600)
                self.after_death(seed)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    p.add_argument("--dir", default=None, help="working folder (default: a new temp folder)")
    args = p.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="dfg-soak-"))
    soak = Soak(root, args.runs, args.steps, random.Random(args.seed))
    t0 = time.time()
    print(f"soak in {root}: {args.runs} runs x {args.steps} steps, {args.minutes} min of kills", flush=True)
    soak.references()
    print(f"references done in {time.time() - t0:.0f}s", flush=True)
    soak.loop(args.minutes)
    c = soak.counts
    print(f"{c['kills']} kills ({c['checkpoint_write_kills']} inside a checkpoint write), {c['resumes']} resumes, "
          f"{c['completed']} runs completed in {time.time() - t0:.0f}s; at most {c['max_redone_steps']} steps "
          f"redone after a kill (checkpoint every 5)")
    print(" ".join(f"{k}={v}" for k, v in c.items()))
    bad = c["lost_rows"] + c["duplicate_rows"] + c["corrupt_checkpoints"] + c["final_mismatch"] + \
        c["status_not_interrupted"] + (c["max_redone_steps"] > 5)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
