"""Runs that go wrong end with a clear status and keep their last good checkpoint: divergence (real and
injected), out of memory, a full disk (injected, and a real 12 MB tmpfs), a stop between log rows, a torn
metrics line; and a run is trained by one process at a time, with a heartbeat readers can trust."""
import math
import os
import subprocess
import time

import numpy as np
import pytest
from conftest import pretrained_data_root
import torch

import dfg.runstore as runstore
from dfg import cli
from dfg.checkpoint import load_checkpoint
from dfg.config import make_config
from dfg.jobs import launch
from dfg.loop import train
from dfg.methods import METHODS
from dfg.fileio import DiskFullError
from dfg.runstore import Run, RunBusyError

TINY = dict(steps=10, ckpt_every=5, log_every=5, eval_every=10, pretrain_steps=50, head_refit_steps=10,
            limit_test=100, batch_size=16, fw_per_class=3, threads=1,
            source_per_class=100)
QUIET = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A data root whose source model is already cached (workers would otherwise all pretrain it)."""
    return pretrained_data_root(tmp_path_factory, TINY)


def tiny(data_root, **kw):
    return make_config("demo", {**TINY, "data_root": data_root, **kw})


def new_run(tmp_path, cfg, run_id="r"):
    return Run.create(tmp_path / "runs", run_id, cfg.to_dict())


def patch_step(monkeypatch, at_step, effect, method="dfg"):
    """Wrap `method`'s train_step: at `at_step`, call effect(method, out) (may raise or edit the losses)."""
    real = METHODS[method].train_step

    def step(self, n, batches):
        out = real(self, n, batches)
        return effect(self, out) or out if n == at_step else out
    monkeypatch.setattr(METHODS[method], "train_step", step)


VOLATILE = ("time", "steps_per_s")  # wall-clock fields: the only ones allowed to differ


def strip(obj):
    """`obj` without its wall-clock fields, at any depth (best_on_val nests a test row)."""
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


def all_finite(state) -> bool:
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(all_finite(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(all_finite(v) for v in state)
    return not isinstance(state, float) or math.isfinite(state)


def train_steps(run):
    return [r["step"] for r in run.read_metrics()[0] if r["kind"] == "train"]


# -- divergence ------------------------------------------------------------------------------------------
def test_huge_learning_rate_diverges_and_keeps_the_last_good_checkpoint(data_root, tmp_path):
    cfg = tiny(data_root, steps=40, optimizer_ec="sgd", lr_extractor=0.5, lr_classifier=0.5, ckpt_every=2,
               log_every=2)
    run = new_run(tmp_path, cfg)
    s = train(cfg, run, **QUIET)
    assert s["state"] == "diverged" and run.status()["state"] == "diverged"
    step = s["step"]
    assert f"at step {step};" in s["error"] and ("loss L_" in s["error"] or "became non-finite" in s["error"]), s["error"]
    ckpt = load_checkpoint(run.checkpoint_path, backbone="lenet", method="dfg")
    assert step - cfg.ckpt_every <= ckpt["step"] < step and all_finite(ckpt["state"])
    rows = run.read_metrics()[0]
    assert all(all_finite(r) for r in rows) and max(train_steps(run)) < step  # no row holds a NaN


@pytest.mark.parametrize("where", ["loss", "weight", "optimizer"])
def test_injected_nan_names_the_loss_or_weight_and_the_step(where, data_root, tmp_path, monkeypatch):
    if where == "loss":
        patch_step(monkeypatch, 7, lambda m, out: {**out, "L_G": float("nan")})
    elif where == "weight":  # a weight goes Inf after step 10's losses were computed: caught before the checkpoint
        def poison(m, out):
            next(m.generator.parameters()).data.fill_(float("inf"))
        patch_step(monkeypatch, 10, poison)
    else:  # Adam's second moment overflows while the weights are still finite: no checkpoint may keep it
        def poison(m, out):
            m.opts["generator"].state[next(m.generator.parameters())]["exp_avg_sq"].fill_(float("inf"))
        patch_step(monkeypatch, 10, poison)
    cfg = tiny(data_root)
    run = new_run(tmp_path, cfg)
    s = train(cfg, run, **QUIET)
    assert s["state"] == "diverged"
    if where == "loss":
        assert s["step"] == 7 and s["error"].startswith("loss L_G became nan at step 7")
    elif where == "weight":
        assert s["step"] == 10 and s["error"].startswith("weight generator.") and "at step 10" in s["error"]
    else:
        assert s["step"] == 10 and s["error"].startswith("generator optimizer state exp_avg_sq of parameter 0 "
                                                         "became non-finite at step 10")
    ckpt = load_checkpoint(run.checkpoint_path)
    assert ckpt["step"] == 5 and all_finite(ckpt["state"])


# -- out of memory ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("error", [torch.OutOfMemoryError, MemoryError])
def test_out_of_memory_fails_clearly_and_the_worker_exits_nonzero(error, data_root, tmp_path, monkeypatch):
    def oom(m, out):
        raise error("CUDA out of memory. Tried to allocate 2.00 GiB")
    patch_step(monkeypatch, 3, oom)
    run = new_run(tmp_path, tiny(data_root))
    rc = cli.main(["worker", run.id, "--runs-dir", str(run.root)])  # the background worker's entry point
    assert rc == 1
    s = run.status()
    assert s["state"] == "failed" and s["step"] == 3
    assert s["error"].startswith("failed: out of memory at batch size 16; lower batch_size")


# -- disk full -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["checkpoint", "metrics"])
def test_disk_full_fails_clearly_keeps_the_checkpoint_and_resumes(target, data_root, tmp_path, monkeypatch):
    cfg = tiny(data_root)
    run = new_run(tmp_path, cfg)
    monkeypatch.setenv("DFG_FAULT", f"enospc_{target}:10")
    s = train(cfg, run, **QUIET)
    name = "checkpoint.pt" if target == "checkpoint" else "metrics.jsonl"
    assert s["state"] == "failed" and run.status()["state"] == "failed"
    assert s["error"] == (f"failed: disk full while writing {run.path / name}: "
                          "free space or choose another runs dir")
    assert load_checkpoint(run.checkpoint_path)["step"] == 5  # the previous checkpoint survived
    assert not list(run.path.glob(".*.tmp*"))
    raw = (run.path / "metrics.jsonl").read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == len(run.read_metrics()[0])  # no half row left
    assert train_steps(run) == ([5, 10] if target == "checkpoint" else [5])
    monkeypatch.delenv("DFG_FAULT")  # space freed: resume finishes, every row once
    assert train(cfg, run, resume=True, **QUIET)["state"] == "finished"
    assert train_steps(run) == [5, 10]


def test_disk_full_on_a_real_small_filesystem(data_root, tmp_path):
    """A 12 MB tmpfs holds the first 7.4 MB checkpoint but not a second copy beside it."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)], check=True,
                       capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {e}")
    try:
        cfg = tiny(data_root)
        run = Run.create(mnt, "full", cfg.to_dict())
        s = train(cfg, run, **QUIET)
        assert s["state"] == "failed" and run.status()["state"] == "failed" and s["step"] == 10
        assert s["error"] == (f"failed: disk full while writing {run.checkpoint_path}: "
                              "free space or choose another runs dir")
        ckpt = load_checkpoint(run.checkpoint_path)
        assert ckpt["step"] == 5 and all_finite(ckpt["state"])
        assert train_steps(run) == [5, 10]
    finally:
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True, timeout=20)


# -- stop, torn rows -------------------------------------------------------------------------------------
def test_stop_between_log_rows_then_resume_gives_the_uninterrupted_rows(data_root, tmp_path, monkeypatch):
    cfg = tiny(data_root)
    ref = new_run(tmp_path, cfg, "ref")
    assert train(cfg, ref, **QUIET)["state"] == "finished"
    run = new_run(tmp_path, cfg, "stopped")
    patch_step(monkeypatch, 3, lambda m, out: run.request_stop())
    s = train(cfg, run, **QUIET)
    assert s["state"] == "stopped" and s["step"] == 3 and load_checkpoint(run.checkpoint_path)["step"] == 3
    monkeypatch.undo()
    assert train(cfg, run, resume=True, **QUIET)["state"] == "finished"
    # the step-5 row averages steps 1-5 although steps 1-3 ran in the first process
    assert strip(run.read_metrics()[0]) == strip(ref.read_metrics()[0])


def test_a_resume_with_other_threads_keeps_the_source_model_the_run_started_from(tmp_path, monkeypatch):
    """threads may change on a resume, and the source cache has one entry per thread count: the resume finds
    the entry its checkpoint names instead of pretraining another source model (W(E_S), DELTA's reference)."""
    cfg = make_config("demo", {**TINY, "data_root": str(tmp_path / "data"), "threads": 1})
    run = new_run(tmp_path, cfg)
    patch_step(monkeypatch, 5, lambda m, out: run.request_stop())
    assert train(cfg, run, **QUIET)["state"] == "stopped"
    monkeypatch.undo()
    assert load_checkpoint(run.checkpoint_path)["state"]["source_compute"] == {"threads": 1, "device": "cpu"}
    entries = sorted((tmp_path / "data" / "sources").glob("*.pt"))
    logged = []
    more = make_config("demo", {**TINY, "data_root": str(tmp_path / "data"), "threads": 2})
    assert train(more, run, resume=True, log=logged.append)["state"] == "finished"
    assert sorted((tmp_path / "data" / "sources").glob("*.pt")) == entries and len(entries) == 1
    assert not any("pretrain source" in m for m in logged), logged
    assert load_checkpoint(run.checkpoint_path)["state"]["source_compute"]["threads"] == 1


def assert_same_state(a, b, where="state"):
    """Checkpoint states equal: every tensor bit for bit (torch.equal), every other value exactly."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {list(a)} vs {list(b)}"
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# Every method, and every piece of training state a resume could lose. steps=10, ckpt_every=5,
# log_every=5 (TINY); each case stops between rows and resumes into the rest of the run.
RESUME_CASES = {
    "original": (dict(method="original"), 3),
    "finetune": (dict(method="finetune"), 3),
    "delta": (dict(method="delta"), 3),
    # phases 1-3 are steps 1-3, 4-6, 7-10: stopped in phase 1, resumed across both boundaries; stopped
    # in phase 2 (the noise generator in use), resumed across the second; fc level (default) and conv
    "difa_cmwgan-phase1": (dict(method="difa_cmwgan", difa_phase_fraction=0.3), 2),
    "difa_cmwgan-phase2": (dict(method="difa_cmwgan", difa_phase_fraction=0.3), 5),
    "difa_cmwgan-conv-phase2": (dict(method="difa_cmwgan", difa_phase_fraction=0.3, difa_level="conv"), 5),
    # W at 0, 3, 6, 9 (the stop step recomputes W just before its checkpoint), Eq. 4 every 4 steps:
    # the noise generator and the batch stream must continue exactly
    "dfg-noise-stream-weights": (dict(method="dfg", n_w=3, n_c2=4), 3),
    # SGD with momentum, lr ÷10 after step 5: stopped before the drop, resumed after it
    "dfg-sgd-lr-drop": (dict(method="dfg", optimizer_ec="sgd", lr_extractor=0.01, lr_classifier=0.01,
                             lr_drop_at=0.5, n_w=3), 4),
    "original-sgd-lr-drop": (dict(method="original", optimizer_ec="sgd", lr_extractor=0.01,
                                  lr_classifier=0.01, lr_drop_at=0.5), 4),
    "dfg-loss-gate-delta": (dict(method="dfg", official_loss_gate=True, transfer_reg="delta", n_w=3), 4),
    "dfg-l2sp": (dict(method="dfg", transfer_reg="l2sp", n_w=3), 3),
    # a validation split, evaluated every 2 steps on both sides of the stop. DFG's best is after the stop;
    # Original's val top-1 ties at steps 2-8, so its best is step 2, before the stop (ties keep the first)
    "dfg-val-best": (dict(method="dfg", val_fraction=0.2, eval_every=2, n_w=3), 3),
    "original-val-best-before-stop": (dict(method="original", val_fraction=0.2, eval_every=2, steps=8), 3),
}


def test_every_method_has_a_resume_case():
    assert {overrides["method"] for overrides, _ in RESUME_CASES.values()} == set(METHODS)


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_every_method_stopped_and_resumed_ends_as_the_uninterrupted_run(case, data_root, tmp_path, monkeypatch):
    """Same metrics rows, filter-weight history, final.json (best on validation) and final checkpoint
    (weights, optimiser moments/momentum, noise generator, batch position, method extras) as one run."""
    overrides, stop_at = RESUME_CASES[case]
    cfg = tiny(data_root, **overrides)
    ref = new_run(tmp_path, cfg, "ref")
    assert train(cfg, ref, **QUIET)["state"] == "finished"
    run = new_run(tmp_path, cfg, "stopped")
    patch_step(monkeypatch, stop_at, lambda m, out: run.request_stop(), method=cfg.method)
    s = train(cfg, run, **QUIET)
    assert s["state"] == "stopped" and s["step"] == stop_at
    monkeypatch.undo()
    assert train(cfg, run, resume=True, **QUIET)["state"] == "finished"
    assert strip(run.read_metrics()[0]) == strip(ref.read_metrics()[0])
    final, ref_final = run.read_json("final.json"), ref.read_json("final.json")
    assert strip(final) == strip(ref_final)
    assert (final["best_on_val"] is not None) == (cfg.val_fraction > 0)
    if case == "original-val-best-before-stop":  # so that a best lost across the resume shows
        assert final["best_on_val"]["step"] < stop_at
    steps = ref.filter_weight_steps()
    assert run.filter_weight_steps() == steps
    for step in steps:
        w, ref_w = run.load_filter_weights(step), ref.load_filter_weights(step)
        assert w.keys() == ref_w.keys() and all(np.array_equal(w[k], ref_w[k]) for k in w), step
    a, b = load_checkpoint(run.checkpoint_path), load_checkpoint(ref.checkpoint_path)
    assert a["step"] == b["step"] == cfg.steps
    assert_same_state(strip(a["state"]), strip(b["state"]))  # best_on_val's test row has a time


def test_a_run_that_pretrained_its_source_matches_one_that_found_it_cached(tmp_path):
    """A killed run's first process may have trained the source; its resumed process loads it from the
    cache. Both must build the same model (the re-fit head's init once depended on which happened)."""
    cfg = make_config("demo", {**TINY, "steps": 5, "seed": 3, "data_root": str(tmp_path / "fresh"),
                               "head_refit": "always"})  # digits -> digits would keep the head
    rows = []
    for name in ("cold", "warm"):
        run = new_run(tmp_path, cfg, name)
        assert train(cfg, run, **QUIET)["state"] == "finished"
        rows.append(strip(run.read_metrics()[0]))
    assert rows[0] == rows[1]


def test_a_torn_last_row_is_cut_and_every_reader_offset_stays_valid(tmp_path):
    run = Run.create(tmp_path, "torn", {"seed": 0})
    run.append_metrics([{"kind": "train", "step": 1}, {"kind": "train", "step": 2}])
    rows, offset = run.read_metrics()
    with open(run.path / "metrics.jsonl", "ab") as f:
        f.write(b'{"kind": "train", "st')  # a kill in the middle of a write
    assert run.read_metrics(offset) == ([], offset)  # readers never consume half a line
    on_file = run.prepare_metrics(keep=True)
    assert on_file == {("train", None, 1), ("train", None, 2)}
    run.append_metrics([{"kind": "train", "step": 2}, {"kind": "train", "step": 3}], skip=on_file)
    assert run.read_metrics(offset)[0] == [{"kind": "train", "step": 3}]
    assert [r["step"] for r in run.read_metrics()[0]] == [1, 2, 3]


# -- one writer, liveness --------------------------------------------------------------------------------
def test_one_writer_per_run(data_root, tmp_path):
    run = new_run(tmp_path, tiny(data_root))
    with run.writer():
        with pytest.raises(RunBusyError, match="already being trained"):
            with run.writer():
                pass
        (run.path / "worker.pid").write_text(str(os.getpid()))
        with pytest.raises(RunBusyError, match="is starting"):
            launch(run)  # launched twice before the first worker got going
        run.set_status(state="running", pid=os.getpid(), heartbeat=time.time())
        with pytest.raises(RunBusyError, match="still running"):
            launch(run)
        before = run.raw_status()
        assert cli.main(["worker", run.id, "--runs-dir", str(run.root)]) == 1  # a second worker gives up
        assert run.raw_status() == before  # ... and leaves the live run's status alone
    with run.writer():  # released on exit
        pass


def test_a_resume_launched_meanwhile_is_not_launched_twice_and_keeps_a_stop(tmp_path, monkeypatch):
    """A stopped run whose worker was just launched still reads "stopped" (the worker has not reported): a
    second launch (a double click, another tab, a sweep) is refused and leaves a Stop made meanwhile alone.
    A worker.pid older than the last status write is a worker that has reported since: no obstacle."""
    from dfg import executors, jobs
    run = Run.create(tmp_path, "r", {"seed": 0})
    run.set_status(state="stopped")
    time.sleep(0.02)
    (run.path / "worker.pid").write_text(str(os.getpid()))  # alive, launched after the last status write
    run.request_stop()
    with pytest.raises(RunBusyError, match="is starting"):
        launch(run)
    assert run.stop_requested() and executors.action_for(run) == "busy"
    time.sleep(0.02)
    run.set_status(state="stopped")  # that worker reported since; its pid may name another process now
    assert jobs.starting_worker(run) == 0 and executors.action_for(run) == "resume"
    spawned, real_popen = [], subprocess.Popen
    monkeypatch.setattr(jobs.subprocess, "Popen", lambda *a, **k: spawned.append(a) or real_popen(["true"]))
    launch(run)
    assert len(spawned) == 1 and not run.stop_requested()  # the old request cleared, as before


def test_sigterm_to_a_sweep_stops_its_workers_and_writes_its_tables(tmp_path, monkeypatch):
    """kill <sweep pid>: as Ctrl-C, the running workers are asked to checkpoint and stop and the tables are
    written; the workers, in their own sessions, would otherwise train on unwatched."""
    import signal
    from dfg import executors
    from dfg.jobs import sigterm_as_interrupt
    from dfg.sweep import run_sweep

    found = signal.getsignal(signal.SIGTERM)  # the default, or one another library installed (Ray's)
    with pytest.raises(KeyboardInterrupt):
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is found  # put back
    asked = []

    def run(self, runs, on_done):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt:
            asked.extend(r.id for r in runs)  # where the executor asks its workers to stop
            raise
    monkeypatch.setattr(executors.LocalExecutor, "run", run)
    monkeypatch.setattr(executors, "preflight_all", lambda configs, log=print: None)
    lines = []
    with pytest.raises(KeyboardInterrupt):
        run_sweep(tmp_path / "runs", ["demo"], ["dfg"], [0], name="t", sets=["steps=6"], log=lines.append)
    assert len(asked) == 1 and any("interrupted" in m for m in lines)
    assert (tmp_path / "runs" / "sweeps" / "t" / "results.md").exists()


def test_a_stop_left_by_a_killed_sweep_does_not_stop_the_next_launch(tmp_path):
    """A worker killed after its stop request leaves the STOP file behind; the sweep that resumes the run
    withdraws it (its launch asks the run to go on), and so does the executor that killed the worker."""
    from dfg.executors import LocalExecutor
    from dfg.sweep import _prepare
    from dfg.grid import expand_grid

    cell = expand_grid("k", ["demo"], ["dfg"], [0])[0]
    run = Run.create(tmp_path, cell.run_id, cell.config(1).to_dict())
    run.set_status(state="interrupted")
    run.request_stop()
    assert _prepare(tmp_path, cell, 1, "resume", print) and not run.stop_requested()
    stubborn = subprocess.Popen(["sleep", "30"], start_new_session=True)
    run.request_stop()
    import dfg.executors as ex
    old, ex.STOP_GRACE_S = ex.STOP_GRACE_S, 0.2
    try:
        LocalExecutor._stop_all([(run, stubborn)])
    finally:
        ex.STOP_GRACE_S = old
    assert stubborn.wait(5) == -9 and not run.stop_requested()


def test_status_tells_a_dead_or_silent_worker_from_a_live_one(tmp_path, monkeypatch):
    run = Run.create(tmp_path, "live", {"seed": 0})
    dead = subprocess.Popen(["true"])
    dead.wait()
    run.set_status(state="running", pid=dead.pid, heartbeat=time.time())
    s = run.status()
    assert s["state"] == "interrupted" and "resume" in s["error"]
    run.set_status(state="running", pid=os.getpid(), heartbeat=time.time() - 3600)
    assert run.status()["state"] == "interrupted"  # alive pid (or a reused one) but silent for an hour
    monkeypatch.setattr(runstore, "HEARTBEAT_EVERY_S", 0.05)
    with run.writer():  # the writer's heartbeat thread keeps it live through a long setup
        time.sleep(0.3)
        assert run.status()["state"] == "running"
        assert time.time() - (run.path / "heartbeat").stat().st_mtime < 0.2


def test_disk_full_status_write_falls_back_to_in_place(tmp_path, monkeypatch):
    run = Run.create(tmp_path, "st", {"seed": 0})

    def full(*a, **k):
        raise DiskFullError("disk full while writing status.json")
    monkeypatch.setattr(runstore, "atomic_write_bytes", full)
    run.set_status(state="failed", error="failed: disk full")
    assert run.raw_status()["state"] == "failed"
