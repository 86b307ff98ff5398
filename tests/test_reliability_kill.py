"""A real worker process SIGKILLed four times (once inside a checkpoint write, three times at random
moments) and resumed ends with exactly the metrics, filter weights and weights of an uninterrupted run
with the same seed, while a reader follows both runs live and sees every row once, in order."""
import gc
import os
import random
import signal
import threading
import time
import warnings

import pytest
from conftest import pretrained_data_root
import torch

from dfg.checkpoint import load_checkpoint
from dfg.config import make_config
from dfg.jobs import launch, stop_on_sigterm, submit
from dfg.fileio import pid_alive
from dfg.runstore import Run

TINY = dict(steps=40, ckpt_every=5, log_every=5, eval_every=20, pretrain_steps=50, head_refit_steps=10,
            limit_test=200, threads=1, source_per_class=100)
VOLATILE = ("time", "steps_per_s")  # wall-clock fields: the only ones allowed to differ


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A data root whose source model is already cached (workers would otherwise all pretrain it)."""
    return pretrained_data_root(tmp_path_factory, TINY)


def strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in VOLATILE}


class Follower:
    """Polls runs incrementally (two independent cursors per run) and their status, like the app."""

    def __init__(self, runs):
        self.runs, self.errors, self.stop = runs, [], threading.Event()
        self.rows = {(r.id, c): [] for r in runs for c in (0, 1)}
        self.offsets = dict.fromkeys(self.rows, 0)
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def poll(self):
        for run in self.runs:
            assert run.status()["state"] in ("created", "running", "interrupted", "finished"), run.status()
            for c in (0, 1):
                new, self.offsets[run.id, c] = run.read_metrics(self.offsets[run.id, c])
                self.rows[run.id, c] += new

    def loop(self):
        while not self.stop.wait(0.02):
            try:
                self.poll()
            except Exception as e:  # reported by the test
                self.errors.append(repr(e))

    def finish(self):
        self.stop.set()
        self.thread.join()
        self.poll()


def wait_until(predicate, timeout=120.0):
    t0 = time.time()
    while not predicate():
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.02)


def last_row_step(run):
    rows = [r for r in run.read_metrics()[0] if r["kind"] == "train"]
    return rows[-1]["step"] if rows else 0


def test_killed_worker_resumes_to_the_uninterrupted_result(data_root, tmp_path, monkeypatch):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        killed_and_resumed(data_root, tmp_path, monkeypatch)
        gc.collect()
    # jobs.launch keeps its workers' Popen objects (and reaps ended ones): none is dropped while it runs
    assert not [w for w in caught if "still running" in str(w.message)]


def killed_and_resumed(data_root, tmp_path, monkeypatch):
    cfg = make_config("demo", {**TINY, "data_root": data_root, "seed": 2})
    run = Run.create(tmp_path, "killed", cfg.to_dict())
    ref = submit(cfg, tmp_path, "reference")  # the app's path: preflight, create, launch
    follower = Follower([ref, run])  # the reference runs alongside: two writers at once, one reader on both

    # kill 1: inside the step-15 checkpoint write (temp file complete, not yet renamed)
    monkeypatch.setenv("DFG_FAULT", "kill_during_checkpoint:15")
    pid = launch(run)
    monkeypatch.delenv("DFG_FAULT")
    wait_until(lambda: not pid_alive(pid))
    assert run.status()["state"] == "interrupted"
    assert list(run.path.glob(".checkpoint.pt.tmp*")), "the kill landed after the rename"
    assert load_checkpoint(run.checkpoint_path)["step"] == 10  # the previous checkpoint survived whole
    resumed_from = [10]

    # kills 2-4: SIGKILL at random moments after the resumed worker has made progress (mid-step,
    # mid-eval or mid-write: rows are written every 5 steps, the kill comes 0-3 steps later, timed
    # from the worker's own logged speed so a faster build still dies before the last step)
    rng = random.Random(7)
    for lo, hi in ((17, 23), (23, 29), (29, 34)):
        pid = launch(run)
        target = max(rng.randint(lo, hi), resumed_from[-1] + 1)
        wait_until(lambda: run.raw_status().get("pid") == pid and run.raw_status().get("step", 0) >= target - 4
                   and run.raw_status().get("step", 0) > resumed_from[-1])
        speeds = [r["steps_per_s"] for r in run.read_metrics()[0] if r["kind"] == "train" and r.get("steps_per_s")]
        time.sleep(rng.uniform(0.0, min(0.8, 3.0 / max(speeds[-1], 1e-3)) if speeds else 0.2))
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid))
        s = run.status()
        assert s["state"] == "interrupted", s
        assert run.config()["seed"] == 2 and run.read_json("data.json")["num_classes"] == 10  # still readable
        ckpt = load_checkpoint(run.checkpoint_path)
        # at most one checkpoint interval is redone: the checkpoint is at most ckpt_every behind the rows
        assert last_row_step(run) - ckpt["step"] <= cfg.ckpt_every
        resumed_from.append(ckpt["step"])

    pid = launch(run)
    wait_until(lambda: run.status()["state"] == "finished" and ref.status()["state"] == "finished")
    follower.finish()
    assert not follower.errors

    log = (run.path / "log.txt").read_text()
    assert [f"resumed from step {s}" in log for s in resumed_from] == [True] * 4
    assert not list(run.path.glob(".*.tmp*"))  # the killed write's temp file was cleaned up
    ref_rows, rows = ref.read_metrics()[0], run.read_metrics()[0]
    # every train row once, in order, equal to the uninterrupted run's (wall-clock fields aside)
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(5, 41, 5))
    assert [strip(r) for r in rows] == [strip(r) for r in ref_rows]
    assert strip(run.read_json("final.json")["last"]) == strip(ref.read_json("final.json")["last"])
    assert run.read_json("final.json")["last"]["top1"] == ref.status()["top1"]
    # the final weights, optimiser states and RNG are bit-identical
    a, b = load_checkpoint(ref.checkpoint_path)["state"], load_checkpoint(run.checkpoint_path)["state"]
    for net, sd in a["method"]["nets"].items():
        assert all(torch.equal(t, b["method"]["nets"][net][k]) for k, t in sd.items()), net
    assert torch.equal(a["method"]["rng"], b["method"]["rng"])
    assert run.filter_weight_steps() == ref.filter_weight_steps()
    # the live reader saw exactly the file's rows, and both of its cursors agree
    for r, full in ((ref, ref_rows), (run, rows)):
        assert follower.rows[r.id, 0] == follower.rows[r.id, 1] == full
        raw = (r.path / "metrics.jsonl").read_bytes()
        assert raw.endswith(b"\n") and raw.count(b"\n") == len(full)  # every line parses


def test_sigterm_checkpoints_and_stops_the_worker_and_a_second_one_ends_it(data_root, tmp_path):
    """docker stop / a scheduler's pre-emption: SIGTERM ends the step, writes a checkpoint at it and records the
    run as stopped (none of its steps lost); resumed, it continues from there. A second SIGTERM is not held
    up by a slow step: the first gives SIGTERM back to the handler that was there before (by default, the
    end of the process)."""
    cfg = make_config("demo", {**TINY, "data_root": data_root, "steps": 400, "ckpt_every": 200})
    run = Run.create(tmp_path, "termed", cfg.to_dict())
    pid = launch(run)
    wait_until(lambda: run.raw_status().get("pid") == pid and run.raw_status().get("step", 0) >= 5)
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pid_alive(pid))
    s = run.status()
    assert s["state"] == "stopped" and 5 <= s["step"] < 200, s  # stopped between the checkpoint interval's ends
    assert load_checkpoint(run.checkpoint_path)["step"] == s["step"] and not run.stop_requested()
    pid = launch(run)
    wait_until(lambda: run.raw_status().get("pid") == pid and run.raw_status().get("step", 0) > s["step"])
    assert f"resumed from step {s['step']}" in (run.path / "log.txt").read_text()
    run.request_stop()
    wait_until(lambda: not pid_alive(pid))
    # in this process: the first SIGTERM only asks for the stop and hands SIGTERM back to its default action
    # (so a second one ends the process), and leaving the block restores the handler found on entry
    mine = signal.signal(signal.SIGTERM, lambda *a: None)
    try:
        before = signal.getsignal(signal.SIGTERM)
        run.clear_stop()
        with stop_on_sigterm(run):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # Python runs the handler at the next bytecode boundary
            assert run.stop_requested() and signal.getsignal(signal.SIGTERM) is before
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal(signal.SIGTERM, mine)
