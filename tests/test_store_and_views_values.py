"""Values the run store, checkpoints, config checks, tables, sweeps, jobs and the app's views must give, one test
per bug a mutation review showed no other test would catch: liveness across hosts and for zombies, typed status
fields, fresh starts, torn and partial metric lines, checksums over shapes, range checks, sample counts and
replicates in the tables, sweep extension rules, thread sharing, ETA, minority classes, Fig. 6's points,
representative filters, W* with the official switches, live-loss tails and metrics."""
import json
import math
import os
import socket
import subprocess
import time

import numpy as np
import pytest
import torch

from dfg import fileio, jobs, runstore, views
from dfg.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dfg.config import ConfigError, make_config
from dfg.fileio import DiskFullError, atomic_write_bytes, newest_json_line, pid_alive, writable_problem
from dfg.runlog import is_test_eval
from dfg.runstore import Run


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


# ---- runstore / fileio ------------------------------------------------------------------------------------
def test_a_run_trained_on_another_host_is_not_judged_by_this_hosts_pids(tmp_path):
    """A run on a shared runs folder, trained by another machine whose pid does not
    exist here, with a fresh heartbeat, is running — not interrupted."""
    run = Run.create(tmp_path, "r", {"seed": 0})
    run.set_status(state="running", pid=_dead_pid(), host="another-machine", heartbeat=time.time())
    assert run.status()["state"] == "running"


def test_a_pid_of_another_user_is_alive(monkeypatch):
    """Os.kill(pid, 0) raising PermissionError means the process exists."""
    def kill(pid, sig):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(fileio.os, "kill", kill)
    assert pid_alive(4242) is True


def test_a_zombie_child_is_not_alive():
    """A finished, not yet reaped child is dead."""
    p = subprocess.Popen(["true"])
    try:
        for _ in range(500):  # up to 10 s on a busy machine
            time.sleep(0.02)
            with open(f"/proc/{p.pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    break
        assert pid_alive(p.pid) is False
    finally:
        p.wait()


def test_newest_eval_finds_an_eval_row_on_the_files_first_line(tmp_path):
    """The first line of the file is searched too."""
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"kind": "eval", "split": "test", "step": 1, "top1": 0.5}) + "\n"
                    + json.dumps({"kind": "train", "step": 2, "L_D": 1.0}) + "\n")
    row = newest_json_line(path, is_test_eval, hint=b'"eval"')
    assert row is not None and row["top1"] == 0.5


def test_the_writability_probe_removes_the_folders_it_made(tmp_path):
    assert writable_problem(tmp_path / "a" / "b") is None
    assert not (tmp_path / "a").exists()


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    import errno
    path = tmp_path / "status.json"
    path.write_bytes(b"old")

    def full():
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(DiskFullError):
        atomic_write_bytes(path, b"new", before_replace=full)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_a_bool_in_status_json_is_not_a_step(tmp_path):
    """A hand-edited "step": true is dropped (JSON true is an int in Python)."""
    run = Run.create(tmp_path, "r", {"seed": 0})
    (run.path / "status.json").write_text(json.dumps({"state": "stopped", "step": True, "pid": True}))
    s = run.raw_status()
    assert "step" not in s and "pid" not in s


def test_a_worker_that_died_before_reporting_makes_the_run_failed(tmp_path):
    run = Run.create(tmp_path, "r", {"seed": 0})
    (run.path / "worker.pid").write_text(str(_dead_pid()))
    s = run.status()
    assert s["state"] == "failed" and "log.txt" in s["error"]


def test_a_fresh_start_removes_the_old_filter_weights(tmp_path):
    """Prepare_metrics(keep=False) empties metrics.jsonl and filter_weights/."""
    run = Run.create(tmp_path, "r", {"seed": 0})
    run.save_filter_weights(10, w_source=np.ones((2, 3)), w_target=np.ones((2, 3)), w_star=np.ones((2, 3)))
    run.append_metrics([{"kind": "train", "step": 10}])
    assert run.prepare_metrics(keep=False) == set()
    assert run.filter_weight_steps() == []


def test_a_metrics_append_that_fills_the_disk_leaves_no_half_row(tmp_path, monkeypatch):
    run = Run.create(tmp_path, "r", {"seed": 0})
    run.append_metrics([{"kind": "train", "step": 1, "L_D": 0.5}])
    size = (run.path / "metrics.jsonl").stat().st_size
    monkeypatch.setenv("DFG_FAULT", "enospc_metrics:2")
    with pytest.raises(DiskFullError):
        run.append_metrics([{"kind": "train", "step": 2, "L_D": 0.25}])
    assert (run.path / "metrics.jsonl").stat().st_size == size


def test_a_reader_never_consumes_a_torn_last_line(tmp_path):
    run = Run.create(tmp_path, "r", {"seed": 0})
    with open(run.path / "metrics.jsonl", "ab") as f:
        f.write(b'{"kind": "train", "step": 1}\n{"kind": "tra')
    rows, off = run.read_metrics(0)
    assert [r["step"] for r in rows] == [1] and off == len(b'{"kind": "train", "step": 1}\n')


# ---- checkpoint -------------------------------------------------------------------------------------------
def test_a_tensor_reshaped_in_a_checkpoint_fails_its_checksum(tmp_path):
    """The digest covers every tensor's shape (the same bytes reshaped is another state)."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"w": torch.arange(6.0).reshape(2, 3)}, backbone="lenet", method="dfg", step=1)
    ck = torch.load(path, weights_only=True)
    ck["state"]["w"] = ck["state"]["w"].reshape(3, 2)
    torch.save(ck, path)
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


# ---- validation -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, field", [
    ({"alpha": 0.4, "beta": 0.3, "gamma": 0.25}, "alpha+beta+gamma"),  # sums to 0.95
    ({"alpha": -0.2, "beta": 0.6, "gamma": 0.6}, "alpha"),             # sums to 1
    ({"delta": "inf"}, "delta"),
    ({"lr_extractor": 0.0}, "lr_extractor"),
    ({"optimizer_ec": "sgd", "sgd_momentum": 1.0}, "sgd_momentum"),
])
def test_values_outside_their_range_are_refused(overrides, field):
    with pytest.raises(ConfigError, match=f"^{field.replace('+', '[+]')}="):
        make_config("demo", overrides)


# ---- tables -----------------------------------------------------------------------------------------------
def _row(run_id, seed, top1, state="finished", majority="", **kw):
    return {"run_id": run_id, "preset": "demo", "dataset": "demo", "method": "dfg", "seed": seed,
            "majority": majority, "state": state, "step": 20, "total_steps": 20, "top1": top1,
            "balanced_acc": top1, "macro_f1": top1, "minority_recall": top1, "best_val_top1": None,
            "best_val_step": None, "error": None, **kw}


def test_one_seed_on_two_majority_sets_is_two_samples():
    """A --majority-combos sweep runs every seed on each majority set."""
    from dfg.tables import summarise
    s = summarise([], [], rows=[_row("a", 0, 50.0, majority="0 1"), _row("b", 0, 60.0, majority="2 3")])
    assert (s[0]["n"], s[0]["top1_mean"]) == (2, 55.0)


def test_the_majority_classes_are_replicates_not_a_setting():
    from dfg.tables import varied_keys
    base = {"preset": "demo", "dataset": "demo", "method": "dfg", "rho": 0.5}
    assert varied_keys([{**base, "majority": [0, 1]}, {**base, "majority": [2, 3]}]) == []


def test_a_finished_run_without_a_final_top1_is_not_counted():
    """N is the number of values averaged."""
    from dfg.tables import summarise
    s = summarise([], [], rows=[_row("a", 0, 50.0), _row("b", 1, None)])
    assert (s[0]["n"], s[0]["n_runs"], s[0]["top1_mean"]) == (1, 2, 50.0)


def test_a_pipe_in_a_markdown_cell_is_escaped():
    """A text setting holding '|' must not split the row."""
    from dfg.tables import markdown_table
    assert markdown_table([{"a": "x|y"}], [("a", "A")]).splitlines()[-1] == "| x\\|y |"


@pytest.mark.parametrize("v, text", [(0.0001, "1e-4"), (2e-4, "2e-4"), (1e-5, "1e-5"), (0.5, "0.5"), (0.01, "0.01")])
def test_value_text_is_the_shorter_of_repr_and_scientific(v, text):
    """The canonical text keeps old sweeps' run ids."""
    from dfg.tables import value_text
    assert value_text(v) == text


def test_the_rho_curve_counts_finished_runs_only():
    from dfg.tables import rho_curve
    rows = [_row("a", 0, 50.0, rho=0.5), _row("b", 1, None, state="failed", rho=0.5)]
    line = rho_curve(rows, ["rho"])[0]
    assert line["demo/dfg n"] == 1 and line["demo/dfg mean"] == 50.0


# ---- sweeps -----------------------------------------------------------------------------------------------
def test_changed_fixed_values():
    from dfg.sweep import _changed_fixed
    assert _changed_fixed({"rho": ["0.5"]}, {"rho": ["0.5", "0.75"]}) == []      # more values extend the sweep
    assert _changed_fixed({"rho": ["0.5"]}, {}) == ["rho: 0.5 -> (default)"]      # a fixed value dropped
    assert _changed_fixed({}, {"steps": ["50"]}) == ["steps: (default) -> 50"]
    assert _changed_fixed({"log_every": ["5"]}, {"log_every": ["10"]}) == []      # bookkeeping


def test_a_diverged_run_is_done_for_a_relaunched_sweep(tmp_path):
    """Diverging again is certain; the sweep skips it."""
    from dfg.executors import action_for
    run = Run.create(tmp_path, "r", {"seed": 0})
    run.set_status(state="diverged", step=5, error="L_D became non-finite")
    assert action_for(run) == "skip"


def test_seeds_count():
    from dfg.grid import parse_seeds
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds(1) == [0]


def test_a_threads_set_wins_over_the_executors_count():
    from dfg.grid import Cell
    assert Cell("x", "demo", "dfg", 0, None, {"threads": "2"}).overrides(4)["threads"] == "2"
    assert Cell("x", "demo", "dfg", 0, None, {}).overrides(4)["threads"] == 4


def test_parallel_cpu_runs_share_the_cores(monkeypatch):
    import dfg.executors as ex
    monkeypatch.setattr(ex, "_visible_gpus", lambda: [])
    monkeypatch.setattr(ex, "cpu_cores", lambda: 8)
    assert ex.LocalExecutor(4).threads == 2


# ---- jobs -------------------------------------------------------------------------------------------------
def test_a_worker_pid_older_than_the_last_status_is_not_a_starting_worker(tmp_path):
    """Its pid may belong to another process by now."""
    run = Run.create(tmp_path, "r", {"seed": 0})
    (run.path / "worker.pid").write_text(str(os.getpid()))  # alive (this process)
    os.utime(run.path / "worker.pid", (time.time() - 3600, time.time() - 3600))
    run.set_status(state="stopped", step=5)
    assert jobs.starting_worker(run) == 0


@pytest.fixture
def spawned(monkeypatch):
    calls = []

    class P:
        pid = 12345
    monkeypatch.setattr(jobs, "spawn_worker", lambda run, env=None: calls.append(run.id) or P())
    return calls


def test_a_running_run_is_not_launched_again(tmp_path, spawned):
    run = Run.create(tmp_path, "r", {"seed": 0})
    run.set_status(state="running", pid=os.getpid(), host=socket.gethostname(), heartbeat=time.time())
    with pytest.raises(runstore.RunBusyError):
        jobs.launch(run)
    assert spawned == []


def test_resume_clears_an_old_stop_request(tmp_path, spawned):
    """A Stop pressed earlier must not stop the resumed run at once."""
    run = Run.create(tmp_path, "r", {"seed": 0})
    run.set_status(state="stopped", step=5)
    run.request_stop()
    jobs.launch(run)
    assert spawned == ["r"] and not run.stop_requested()


# ---- views ------------------------------------------------------------------------------------------------
def test_progress_eta_counts_the_steps_left(tmp_path):
    run = Run.create(tmp_path, "r", {"seed": 0, "steps": 100})
    run.set_status(state="running", step=50, total_steps=100, steps_per_s=10.0, pid=os.getpid(),
                   host=socket.gethostname(), heartbeat=time.time())
    assert "ETA 0m05s" in views.progress(run)["text"]


def test_an_interrupted_run_shows_why(tmp_path):
    run = Run.create(tmp_path, "r", {"seed": 0, "steps": 100})
    run.set_status(state="interrupted", step=50, error="the worker stopped without a final status")
    p = views.progress(run)
    assert p["resumable"] and p["error"] == "the worker stopped without a final status"


def test_a_run_started_beside_an_active_one_gets_one_thread(tmp_path, monkeypatch):
    other = Run.create(tmp_path, "busy", {"seed": 0})
    other.set_status(state="running", pid=os.getpid(), host=socket.gethostname(),
                     heartbeat=time.time())
    got = []
    monkeypatch.setattr(jobs, "submit", lambda cfg, root, run_id=None: got.append(cfg))
    views.start_run(make_config("demo", {"threads": 0}), tmp_path)
    assert got[0].threads == 1


def test_the_form_takes_the_majority_count_from_the_given_classes():
    """The form always sends num_majority; given classes decide it."""
    cfg, field, msg = views.build_config("demo", {"majority": "2 9", "num_majority": 5})
    assert (field, msg) == ("", "") and cfg.majority == (2, 9) and cfg.num_majority == 2


def _with_data(tmp_path, data):
    run = Run.create(tmp_path, "r", {"seed": 0})
    run.write_json("data.json", data)
    return run


def test_minority_classes_come_from_data_json_minority(tmp_path):
    from dfg.views_results import recall_rows, run_classes
    run = _with_data(tmp_path, {"class_names": ["a", "b", "c"], "majority": [0, 2], "minority": [1]})
    assert run_classes(run, 3) == (["a", "b", "c"], {1})
    ev = {"top1": 0.5, "per_class_recall": [0.9, 0.1, 0.8]}
    assert [r["minority"] for r in recall_rows(run, ev)] == [False, True, False]


def test_the_results_table_n_is_the_runs_counted():
    from dfg.tables import summarise
    from dfg.views_results import format_summary
    raw = summarise([], [], rows=[_row("a", 0, 50.0), _row("b", 1, None, state="failed", error="boom")])
    assert format_summary(raw, [])[0]["n"] == 1


def test_the_confusion_colours_are_row_normalised(tmp_path):
    """Colour = share of the true class's images."""
    from dfg.views_results import confusion_figure
    run = _with_data(tmp_path, {"class_names": ["a", "b"]})
    ev = {"top1": 0.5, "per_class_recall": [0.5, 0.5], "confusion": [[1, 1], [3, 3]]}
    z = [list(r) for r in confusion_figure(run, ev).data[0].z]
    assert z == [[0.5, 0.5], [0.5, 0.5]]


def test_fig6_needs_two_rhos_with_finished_runs(tmp_path):
    """A ρ whose runs all failed is no point of the curve."""
    from dfg.views_weights import rho_accuracy
    cfg = make_config("demo", {"rho": 0.5}).to_dict()
    a = Run.create(tmp_path, "a", cfg)
    a.set_status(state="finished", step=cfg["steps"])
    a.write_json("final.json", {"last": {"top1": 0.6}})
    b = Run.create(tmp_path, "b", {**cfg, "rho": 0.75})
    b.set_status(state="failed", step=3, error="boom")
    assert rho_accuracy(tmp_path, a) == ([], "")


def test_representative_filters_vary_most_across_classes():
    from dfg.views_weights import representative_filters
    w = np.array([[1.0, 1.0, 0.0, 1.0], [1.0, 1.1, 3.0, 1.0], [1.0, 0.9, 0.0, 1.0]])
    assert representative_filters({"w_source": w}, 1) == [2]


@pytest.mark.parametrize("switch", ["official_unscaled_weights", "official_discard_rho"])
def test_recomputed_w_star_applies_the_runs_official_switches(switch):
    from dfg.filter_weights import attention
    from dfg.views_weights import recompute_w_star
    g = torch.Generator().manual_seed(0)
    ws, wt = torch.rand(3, 5, generator=g) * 2, torch.rand(3, 5, generator=g) * 2
    kw = {"unscaled": True} if switch == "official_unscaled_weights" else {"discard_rho": True}
    want = attention(ws, wt, rho=0.5, delta=0.5, **kw).numpy()
    got = recompute_w_star({"w_source": ws.numpy(), "w_target": wt.numpy()}, 0.5, 0.5, {switch: True})
    assert np.allclose(got, want) and not np.allclose(got, attention(ws, wt, rho=0.5, delta=0.5).numpy())


def test_a_weight_file_rewritten_in_place_is_read_again(tmp_path):
    """Same inode, new content (a copy tool, an rsync --inplace)."""
    from dfg.views_weights import weight_history
    run = Run.create(tmp_path, "r", {"seed": 0})
    run.save_filter_weights(0, w_source=np.ones((2, 3)), w_target=np.ones((2, 3)), w_star=np.ones((2, 3)))
    assert weight_history(run)[0][0]["w_star"].shape == (2, 3)
    import io
    buf = io.BytesIO()
    np.savez(buf, step=np.array(0), w_source=np.ones((2, 4)), w_target=np.ones((2, 4)), w_star=np.full((2, 4), 2.0))
    path = run.path / "filter_weights" / "w_00000000.npz"
    with open(path, "r+b") as f:  # same inode
        f.truncate(0)
        f.write(buf.getvalue())
    assert weight_history(run)[0][0]["w_star"].shape == (2, 4)


def _tail_run(tmp_path, rows):
    run = Run.create(tmp_path, "r", {"seed": 0})
    run.append_metrics(rows)
    return run


def test_live_losses_read_a_shrunk_file_from_its_start(tmp_path):
    """A fresh restart (prepare_metrics keep=False) empties the file."""
    from dfg.views_losses import new_tail, update_tail
    run = _tail_run(tmp_path, [{"kind": "train", "step": s, "L_D": float(s)} for s in (1, 2, 3)])
    tail = new_tail()
    update_tail(tail, run)
    run.prepare_metrics(keep=False)
    run.append_metrics([{"kind": "train", "step": 1, "L_D": 9.0}])
    update_tail(tail, run)
    assert tail["train"]["L_D"].tolist() == [9.0]


def test_a_loss_first_seen_later_is_nan_before(tmp_path):
    """A loss that starts at a later row must not be drawn as 0 before."""
    from dfg.views_losses import new_tail, update_tail
    run = _tail_run(tmp_path, [{"kind": "train", "step": 1, "L_D": 1.0}])
    tail = new_tail()
    update_tail(tail, run)
    run.append_metrics([{"kind": "train", "step": 2, "L_D": 1.0, "GP": 0.5}])
    update_tail(tail, run)
    gp = tail["train"]["GP"]
    assert math.isnan(gp[0]) and gp[1] == 0.5


def test_thin_keeps_the_last_point():
    from dfg.views_losses import thin
    x = np.arange(100.0)
    y = np.zeros(100)
    y[-3:] = [5.0, -1.0, 2.0]  # the last value is neither its bucket's min nor max
    tx, _ = thin(x, y, limit=10)
    assert tx[-1] == 99.0


def test_log_scale_is_refused_when_a_value_is_zero(tmp_path):
    """Log(0) is -inf; the chart falls back to linear."""
    from dfg.views_losses import metric_figure, new_tail, update_tail
    run = _tail_run(tmp_path, [{"kind": "train", "step": s, "GP": v} for s, v in ((1, 0.0), (2, 1.0))])
    tail = new_tail()
    update_tail(tail, run)
    fig = metric_figure({"r": tail}, "GP", log_y=True)
    assert fig.layout.yaxis.type == "linear"


def test_the_checkpoint_stamp_follows_config_json(tmp_path):
    from dfg.views_inspect import checkpoint_stamp
    run = Run.create(tmp_path, "r", {"seed": 0})
    before = checkpoint_stamp(run)
    time.sleep(0.01)
    (run.path / "config.json").write_text(json.dumps({"seed": 1}))
    os.utime(run.path / "config.json", ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert checkpoint_stamp(run) != before


# ---- metrics ----------------------------------------------------------------------------------------------
def test_an_untested_minority_class_is_left_out_of_minority_recall():
    from dfg.metrics import scores
    cm = np.array([[5, 0, 0], [1, 3, 0], [0, 0, 0]])
    assert scores(cm, minority=[1, 2])["minority_recall"] == pytest.approx(0.75)


def test_runs_are_listed_newest_first(tmp_path):
    for run_id, created in (("b", 2.0), ("a", 1.0), ("c", 3.0)):
        Run.create(tmp_path, run_id, {"seed": 0}).set_status(created=created)
    assert [r.id for r in runstore.list_runs(tmp_path)] == ["c", "b", "a"]
