"""Values the app's sidebar and pages, its shared views, the Ray executor's bookkeeping, the test metrics and the
command line's grammar must give: one test per bug a mutation review of these modules showed no other test would
catch. The pages run on one short real DFG run (2 steps, filter weights at steps 0, 1 and 2, a test evaluation and
a checkpoint at step 2), made once for this module."""
import csv
import io
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1.element_tree import Column, Image

from dfg import views
from dfg.config import ConfigError
from dfg.runstore import Run
from conftest import train_demo_run
from test_app import app_on, cam_picker, goto, plotly_spec

MINI = ["pretrain_steps=5", "steps=2", "n_w=1", "eval_every=2", "ckpt_every=2", "log_every=1", "limit_test=60",
        "head_refit_steps=1", "fw_per_class=2", "source_per_class=20", "threads=1"]


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """(the run folder, its data root): a real DFG run short enough to make per module (~7 s on one core)."""
    base = tmp_path_factory.mktemp("mini")
    train_demo_run(base / "runs", base / "data", "mini", MINI)
    return base / "runs" / "mini", base / "data"


@pytest.fixture
def runs(mini, tmp_path):
    """(a runs folder holding a copy of the mini run as "mini", its data root): the pages may write into it."""
    shutil.copytree(mini[0], tmp_path / "runs" / "mini")
    return tmp_path / "runs", mini[1]


def copy_run(root: Path, run_id: str, created: float | None = None, src: str = "mini", **config) -> Run:
    """A copy of a run with config.json values changed and, given `created`, its place in the newest-first list."""
    shutil.copytree(root / src, root / run_id)
    if config:
        path = root / run_id / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    run = Run(root, run_id)
    if created is not None:
        run.set_status(created=created)
    return run


@pytest.fixture
def timers(monkeypatch):
    """{fragment function name: its run_every} for every st.fragment a page declares (AppTest runs no timed
    fragment, so what a served app would poll is read off the declaration)."""
    import streamlit as st
    seen, real = {}, st.fragment

    def fragment(func=None, *, run_every=None, **kw):
        def wrap(f):
            seen[f.__name__] = run_every
            return real(f, run_every=run_every, **kw)
        return wrap(func) if func is not None else wrap
    monkeypatch.setattr(st, "fragment", fragment)
    return seen


@pytest.fixture
def downloads(monkeypatch):
    """{file name: bytes} of every download button the pages draw."""
    from streamlit.runtime.media_file_manager import MediaFileManager
    files, real = {}, MediaFileManager.add

    def add(self, data, mimetype, coordinates, file_name=None, is_for_static_download=False):
        files[file_name] = data
        return real(self, data, mimetype, coordinates, file_name, is_for_static_download)
    monkeypatch.setattr(MediaFileManager, "add", add)
    return files


def csv_rows(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode())))


# ---- the sidebar (app.py) ------------------------------------------------------------------------------------
def test_the_sidebar_opens_on_the_newest_run_and_names_the_device(runs, monkeypatch):
    root, data_root = runs
    Run(root, "mini").set_status(created=1000.0)
    copy_run(root, "newer", created=2000.0)
    at = app_on(root, data_root, monkeypatch)
    assert at.selectbox(key="sidebar.run").value == "newer"
    assert f"Device: {views.device_info()['label']}" in [c.value for c in at.sidebar.caption]


def app_with_older_run_picked(runs, monkeypatch):
    """The app on two runs, "mini" (older) and "newer", with the user's pick on the older one."""
    root, data_root = runs
    Run(root, "mini").set_status(created=1000.0)
    copy_run(root, "newer", created=2000.0)
    at = app_on(root, data_root, monkeypatch)
    at.selectbox(key="sidebar.run").select("mini").run()
    return at


def test_a_link_to_a_run_that_is_not_there_keeps_the_users_pick(runs, monkeypatch):
    at = app_with_older_run_picked(runs, monkeypatch)
    at.query_params["run"] = "gone"
    at.run()
    assert at.selectbox(key="sidebar.run").value == "mini" and at.query_params["run"] == "mini"


def test_the_url_names_no_run_once_the_folder_has_none(runs, tmp_path, monkeypatch):
    root, data_root = runs
    at = app_on(root, data_root, monkeypatch)
    assert at.query_params["run"] == "mini"
    at.text_input(key="runs_dir").set_value(str(tmp_path / "empty")).run()
    assert at.selectbox(key="sidebar.run").value is None and "run" not in at.query_params


# ---- the Start page -------------------------------------------------------------------------------------------
def test_the_demo_starts_in_the_sidebars_data_root_and_opens_its_live_losses(runs, tmp_path, monkeypatch):
    root, data_root = runs
    Run(root, "mini").set_status(created=1000.0)
    asked = []

    def fake_start_demo(where, data):
        asked.append(data)
        return copy_run(Path(where), "demo1", created=500.0)  # older than mini: only the link selects it
    monkeypatch.setattr(views, "start_demo", fake_start_demo)
    at = app_on(root, data_root, monkeypatch)
    at.text_input(key="data_root").set_value(str(tmp_path / "mydata")).run()
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert asked == [str(tmp_path / "mydata")]
    assert at.title[0].value == "Live losses" and at.query_params["run"] == "demo1"
    assert at.selectbox(key="sidebar.run").value == "demo1"


def test_the_start_page_names_the_demo_overrides_only_when_they_are_set(runs, monkeypatch):
    root, data_root = runs
    monkeypatch.delenv(views.DEMO_OVERRIDES_ENV, raising=False)
    at = app_on(root, data_root, monkeypatch)
    assert not any("is set" in c.value for c in at.caption)
    monkeypatch.setenv(views.DEMO_OVERRIDES_ENV, "steps=60")
    at.run()
    assert f"{views.DEMO_OVERRIDES_ENV} is set: {{'steps': '60'}}" in [c.value for c in at.caption]


def test_a_full_disk_when_the_demo_starts_is_a_message(runs, monkeypatch):
    root, data_root = runs

    def full(where, data):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(views, "start_demo", full)
    at = app_on(root, data_root, monkeypatch)
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] == ["Not started: [Errno 28] No space left on device"]


# ---- the Train page -------------------------------------------------------------------------------------------
SELECTS = ("backbone", "dataset", "source", "imbalance", "transfer_reg", "optimizer_ec", "head_refit", "difa_level",
           "short_classes", "start_head", "delta_layers", "frozen_bn")


@pytest.mark.parametrize("preset", ["demo", "caltech256"])
def test_every_choice_on_the_train_form_starts_at_the_presets_value(preset, tmp_path, monkeypatch):
    """demo's target (mnist5k) is also a source dataset; caltech256's source is ImageNet, offered beside the
    datasets; neither is the first option."""
    at = goto(app_on(tmp_path / "runs", tmp_path / "data", monkeypatch), "train")
    at.selectbox(key="train.preset").select(preset).run()
    defaults = views.form_defaults(preset, "dfg")
    shown = {name: at.selectbox(key=f"train.{preset}.dfg.{name}").value for name in SELECTS}
    assert shown == {name: defaults[name] for name in SELECTS}


def test_the_folder_dataset_asks_for_the_folder_and_others_do_not(tmp_path, monkeypatch):
    at = goto(app_on(tmp_path / "runs", tmp_path / "data", monkeypatch), "train")
    assert "train.demo.dfg.folder" not in [t.key for t in at.text_input]
    at.selectbox(key="train.demo.dfg.dataset").select("folder").run()
    assert "train.demo.dfg.folder" in [t.key for t in at.text_input]


def columns_holding(at, key: str) -> list:
    """The innermost columns that hold the widget with this key."""
    found = []
    for node in at.main:
        if isinstance(node, Column) and any(getattr(w, "key", None) == key for w in node):
            found.append(node)
    return found[-1:]


def column_of(at, key: str) -> int:
    """Which of its row's columns holds the element with this key."""
    for node in at.main:
        row = getattr(node, "children", None)
        if isinstance(row, dict) and row and all(isinstance(c, Column) for c in row.values()):
            for i, col in row.items():
                if any(getattr(n, "key", None) == key for n in col):
                    return i
    raise KeyError(key)


def test_a_bad_value_is_named_under_its_own_field(tmp_path, monkeypatch):
    at = goto(app_on(tmp_path / "runs", tmp_path / "data", monkeypatch), "train")
    at.number_input(key="train.demo.dfg.rho").set_value(1.5).run()
    [column] = columns_holding(at, "train.demo.dfg.rho")
    assert [e.value for e in column.error] == ["rho=1.5 is invalid: must lie in [0, 1]"]


def test_the_train_form_starts_a_run_in_the_sidebars_data_root(runs, tmp_path, monkeypatch):
    root, data_root = runs
    got = []

    def fake_start(cfg, where, run_id=None):
        got.append(cfg)
        return copy_run(Path(where), "new")
    monkeypatch.setattr(views, "start_run", fake_start)
    at = goto(app_on(root, data_root, monkeypatch), "train")
    at.text_input(key="data_root").set_value(str(tmp_path / "mydata")).run()
    at.button(key="train.start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [cfg.data_root for cfg in got] == [str(tmp_path / "mydata")]


def test_stop_asks_the_run_to_checkpoint_and_stop_and_launches_nothing(runs, monkeypatch):
    root, data_root = runs
    run = Run(root, "mini")
    run.set_status(state="created")  # active: its worker is starting
    launched = []
    monkeypatch.setattr("dfg.jobs.launch", lambda r: launched.append(r.id) or 0)
    at = goto(app_on(root, data_root, monkeypatch), "train")
    at.button(key="stop.mini").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert run.stop_requested() and launched == []
    assert [t.value for t in at.toast] == ["Asked mini to checkpoint and stop"]


def test_a_failed_runs_error_is_shown_on_the_train_and_live_losses_pages(runs, monkeypatch):
    root, data_root = runs
    Run(root, "mini").set_status(state="failed", error="CUDA out of memory")
    at = goto(app_on(root, data_root, monkeypatch), "train")
    assert ":red[CUDA out of memory]" in [c.value for c in at.caption]
    goto(at, "losses")
    assert [e.value for e in at.error] == ["CUDA out of memory"]


@pytest.mark.parametrize("page, fragment, every", [("train", "job_list", 2.0), ("losses", "charts", 2.0),
                                                   ("filter_weights", "follow_new_steps", 5.0)])
def test_pages_poll_while_the_run_is_active_and_not_after(page, fragment, every, runs, timers, monkeypatch):
    root, data_root = runs
    at = goto(app_on(root, data_root, monkeypatch), page)
    assert timers.get(fragment) is None  # finished: nothing to follow
    Run(root, "mini").set_status(state="created")
    timers.clear()
    at.run()
    assert timers.get(fragment) == every


# ---- Live losses ----------------------------------------------------------------------------------------------
def test_the_pages_open_on_the_sidebars_run_not_the_newest(runs, monkeypatch):
    at = app_with_older_run_picked(runs, monkeypatch)
    goto(at, "losses")
    assert at.multiselect(key="loss.runs.mini").value == ["mini"]
    goto(at, "results")
    assert at.multiselect(key="res.runs.mini").value == ["mini"]


def test_the_log_scale_toggle_draws_a_log_axis(runs, monkeypatch):
    root, data_root = runs
    at = goto(app_on(root, data_root, monkeypatch), "losses")
    assert plotly_spec(at, "loss.chart.L_rC")["layout"]["yaxis"]["type"] == "linear"
    at.toggle(key="loss.log").set_value(True).run()
    assert plotly_spec(at, "loss.chart.L_rC")["layout"]["yaxis"]["type"] == "log"


# ---- Filter weights -------------------------------------------------------------------------------------------
def test_the_heatmaps_show_the_selected_steps_weights(runs, monkeypatch):
    root, data_root = runs
    stored = Run(root, "mini").load_filter_weights(1)
    at = goto(app_on(root, data_root, monkeypatch), "filter_weights")
    assert [int(s) for s in at.select_slider(key="fw.step.mini").options] == [0, 1, 2]
    at.select_slider(key="fw.step.mini").set_value(1).run()
    for name in ("w_source", "w_target", "w_star"):
        assert np.allclose(plotly_spec(at, f"fw.{name}")["data"][0]["z"], stored[name], atol=1e-6), name
    assert [column_of(at, f"fw.{name}") for name in ("w_source", "w_target", "w_star")] == [0, 1, 2]  # Eq. 7's order
    assert not np.allclose(stored["w_target"], Run(root, "mini").load_filter_weights(2)["w_target"])


def test_figure5_starts_on_the_representative_filters_and_thickens_the_selected_step(runs, monkeypatch):
    from dfg.views_weights import representative_filters
    root, data_root = runs
    at = goto(app_on(root, data_root, monkeypatch), "filter_weights")
    want = representative_filters(Run(root, "mini").load_filter_weights(2))
    assert at.multiselect(key="fw.filters.mini").value == want and len(want) == 2

    def widths():
        return {t["name"]: t["line"]["width"] for t in plotly_spec(at, "fw.fig5")["data"] if t.get("name")}
    assert widths() == {"step 0": 2, "step 1": 2, "step 2": 3}
    at.select_slider(key="fw.step.mini").set_value(1).run()
    assert widths() == {"step 0": 2, "step 1": 3, "step 2": 2}


def test_figure6s_table_lists_the_accuracy_at_each_rho(runs, monkeypatch):
    root, data_root = runs
    other = copy_run(root, "half", rho=0.5)
    final = other.read_json("final.json")
    other.write_json("final.json", {**final, "last": {**final["last"], "top1": 0.25}})
    at = goto(app_on(root, data_root, monkeypatch), "filter_weights")
    table = next(d.value for d in at.dataframe if "top1_mean" in d.value.columns)
    mine = 100 * Run(root, "mini").read_json("final.json")["last"]["top1"]
    assert table["rho"].tolist() == [0.5, 0.75]
    assert table["top1_mean"].tolist() == pytest.approx([25.0, mine])


# ---- Feature embeddings ---------------------------------------------------------------------------------------
def test_the_projection_picked_is_the_one_drawn(runs, monkeypatch):
    root, data_root = runs
    at = goto(app_on(root, data_root, monkeypatch), "embeddings")

    def title():
        charts = at.get("vega_lite_chart")
        return json.loads(charts[0].proto.spec)["title"]
    assert title().startswith("PCA of real E(x)")
    at.radio(key="emb.method").set_value("tsne").run()
    assert not at.exception and not at.error
    assert title().startswith("TSNE of real E(x)")


def test_embeddings_of_a_run_without_a_checkpoint_say_so(runs, monkeypatch):
    root, data_root = runs
    (root / "mini" / "checkpoint.pt").unlink()
    at = goto(app_on(root, data_root, monkeypatch), "embeddings")
    assert not at.error and [i.value for i in at.info][0].startswith("mini has no checkpoint yet")


# ---- Grad-CAM -------------------------------------------------------------------------------------------------
def shown_indices(at) -> list[int]:
    return [int(i.proto.imgs[0].caption.split("#")[1].split(":")[0]) for i in at.image
            if i.proto.imgs[0].caption.startswith("test #")]


def test_grad_cam_shows_the_count_asked_of_the_seeds_draw_and_filters_them(runs, monkeypatch):
    from dfg.views_inspect import image_order
    root, data_root = runs
    at = goto(app_on(root, data_root, monkeypatch), "gradcam")
    at.slider(key="cam.count").set_value(2)
    at.number_input(key="cam.seed").set_value(3).run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    assert shown_indices(at) == image_order(Run(root, "mini"), 3)[:2]
    at.radio(key="cam.only").set_value("misclassified").run()
    cells = [i.proto.imgs[0].caption for i in at.image if i.proto.imgs[0].caption.startswith("DFG: ")]
    assert len(cells) == 2 and all(c.startswith("DFG: ✗") for c in cells), cells


def test_each_grad_cam_map_is_under_its_methods_heading(runs, monkeypatch):
    from dfg.views_inspect import GRADCAM_METHODS
    root, data_root = runs
    at = goto(app_on(root, data_root, monkeypatch), "gradcam")
    where = set()
    for node in at.main:
        row = getattr(node, "children", None)
        if isinstance(row, dict) and len(row) == 1 + len(GRADCAM_METHODS) and \
                all(isinstance(c, Column) for c in row.values()):
            for i, col in row.items():
                if any(isinstance(n, Image) and n.proto.imgs[0].caption.startswith("DFG: ") for n in col):
                    where.add(i)
    assert where == {1 + GRADCAM_METHODS.index("dfg")}


def test_grad_cam_preselects_other_methods_runs_and_says_when_their_majority_classes_differ(runs, monkeypatch):
    root, data_root = runs
    ft = copy_run(root, "ft", created=0.0, method="finetune")  # older: the sidebar stays on mini
    data = ft.read_json("data.json")
    ft.write_json("data.json", {**data, "majority": [c for c in range(10) if c not in data["majority"]][:2]})
    at = app_on(root, data_root, monkeypatch)
    at.selectbox(key="sidebar.run").select("mini").run()
    goto(at, "gradcam")
    assert cam_picker(at, "finetune", "mini").value == "ft" and cam_picker(at, "dfg", "mini").value == "mini"
    assert any(c.value.startswith("The picked runs trained with different majority classes") for c in at.caption)
    assert not any("has no checkpoint yet" in i.value for i in at.info)


# ---- Results --------------------------------------------------------------------------------------------------
def test_the_results_downloads_hold_the_numbers_behind_the_tables(runs, downloads, monkeypatch):
    root, data_root = runs
    last = Run(root, "mini").read_json("final.json")["last"]
    goto(app_on(root, data_root, monkeypatch), "results")
    [summary] = csv_rows(downloads["results.csv"])
    assert float(summary["top1_mean"]) == pytest.approx(100 * last["top1"])
    recall = csv_rows(downloads["mini_recall.csv"])
    assert [float(r["recall"]) for r in recall] == pytest.approx(last["per_class_recall"])
    confusion = csv_rows(downloads["mini_confusion.csv"])
    assert [[int(v) for k, v in r.items() if k != "true"] for r in confusion] == last["confusion"]


def test_a_sweep_shows_its_varied_values_and_its_rho_curve(runs, monkeypatch):
    root, data_root = runs
    half = copy_run(root, "half", rho=0.5)
    final = half.read_json("final.json")
    half.write_json("final.json", {**final, "last": {**final["last"], "top1": 0.25}})
    cells = [{"run_id": rid, "preset": "demo", "dataset": "mnist5k", "method": "dfg", "seed": 0, "majority": None,
              "values": {"rho": rho}} for rid, rho in (("mini", "0.75"), ("half", "0.5"))]
    (root / "sweeps" / "s").mkdir(parents=True)
    (root / "sweeps" / "s" / "grid.json").write_text(json.dumps({"name": "s", "created": 1.0, "args": {},
                                                                 "varied": ["rho"], "cells": cells}))
    at = goto(app_on(root, data_root, monkeypatch), "results")
    assert "Sweep s" in [h.value for h in at.subheader]
    summaries = [d.value for d in at.dataframe if "top1 (%)" in d.value.columns]  # all runs, then the sweep's
    assert len(summaries) == 2 and sorted(summaries[1]["rho"].tolist()) == [0.5, 0.75]
    curve = next(d.value for d in at.dataframe if "demo/dfg mean" in d.value.columns)
    assert curve["rho"].tolist() == [0.5, 0.75] and curve["demo/dfg mean"].iloc[0] == pytest.approx(25.0)


# ---- dfg/views.py ---------------------------------------------------------------------------------------------
def _run(tmp_path, run_id="r", **status) -> Run:
    run = Run.create(tmp_path, run_id, {"seed": 0, "steps": 20})
    run.set_status(**status)
    return run


def _live() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "heartbeat": time.time()}


def test_progress_bars_read_each_state(tmp_path):
    p = views.progress(_run(tmp_path, "over", state="finished", step=30, total_steps=20, top1=0.5))
    assert p["fraction"] == 1.0 and p["text"] == "finished at step 30/20 · test top-1 50.00%"
    p = views.progress(_run(tmp_path, "nan", state="diverged", step=7, total_steps=20, error="L_D became non-finite"))
    assert p["error"] == "L_D became non-finite" and not p["resumable"]
    p = views.progress(_run(tmp_path, "prep", state="running", step=0, total_steps=20, **_live()))
    assert p["text"] == "preparing data, source model and filter weights..." and p["active"]
    p = views.progress(_run(tmp_path, "boom", state="failed", step=3, total_steps=20, error="boom"))
    assert p["resumable"] and p["error"] == "boom" and not p["active"]


def test_the_train_list_keeps_every_busy_run_even_beyond_its_limit(tmp_path):
    for i, state in enumerate(["stopped", "finished", "stopped", "finished", "stopped"]):
        _run(tmp_path, f"r{i}", state=state, created=float(i))
    shown, hidden = views.listed_runs(views.list_runs(tmp_path), limit=2)
    assert [run.id for run, _ in shown] == ["r4", "r2", "r0"] and hidden == 2


@pytest.mark.parametrize("sec, text", [(59.4, "0m59s"), (3599, "59m59s"), (3600, "1h00m"), (3661, "1h01m"),
                                       (7322, "2h02m"), (float("nan"), "?"), (float("inf"), "?")])
def test_time_left_reads_as_minutes_and_seconds_or_hours_and_minutes(sec, text):
    assert views.format_seconds(sec) == text


def test_a_run_whose_worker_is_starting_counts_as_training_when_another_starts(tmp_path, monkeypatch):
    _run(tmp_path, "starting", state="created")
    got = []
    monkeypatch.setattr("dfg.jobs.submit", lambda cfg, root, run_id=None: got.append(cfg))
    views.start_run(views.make_config("demo", {"threads": 0}), tmp_path)
    assert got[0].threads == 1


def test_overrides_are_split_on_commas_and_lines_and_keep_an_equals_sign_in_a_value():
    assert views.parse_overrides("steps=60\npretrain_steps=50, folder=/data/a=b") == {
        "steps": "60", "pretrain_steps": "50", "folder": "/data/a=b"}


def test_the_demo_overrides_apply_after_the_sidebars_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv(views.DEMO_OVERRIDES_ENV, f"steps=60,data_root={tmp_path / 'elsewhere'}")
    cfg = views.demo_config(str(tmp_path / "sidebar"))
    assert (cfg.steps, cfg.data_root) == (60, str(tmp_path / "elsewhere"))


def test_a_baselines_form_takes_its_own_learning_rates_only_under_adam():
    from dfg.presets import PRESETS
    assert views.form_defaults("demo", "original")["lr_extractor"] == 1e-3
    assert views.form_defaults("caltech256", "original")["lr_extractor"] == PRESETS["caltech256"].lr_extractor != 1e-3


def test_an_error_that_names_no_field_is_placed_under_none():
    assert views.field_of_error(ConfigError("unknown config field 'pretrain-steps': did you mean pretrain_steps?")) \
        == ""
    assert views.field_of_error(ConfigError("no data under /x")) == ""


# ---- dfg/ray_executor.py, with a stand-in for Ray ------------------------------------------------------------
class FakeRay:
    """What RayExecutor calls on the ray module: a cluster of `cpus` CPUs and `gpus` GPUs over `nodes`, tasks that
    finish in the order given (or raise, for the ids in `fail`), and a Ctrl-C in the first wait if `interrupt`."""

    def __init__(self, cpus=16, gpus=0, nodes=((True, 16),), fail=(), interrupt=False):
        self.cpus, self.gpus, self.node_list, self.fail, self.interrupt = cpus, gpus, nodes, set(fail), interrupt
        self.inits, self.cancelled, self.options = [], [], None

    def init(self, **kw):
        self.inits.append(kw)

    def cluster_resources(self):
        return {"CPU": float(self.cpus), **({"GPU": float(self.gpus)} if self.gpus else {})}

    def nodes(self):
        return [{"Alive": alive, "Resources": {"CPU": float(n)}} for alive, n in self.node_list]

    def remote(self, fn):
        ray = self

        class Task:
            def options(self, **kw):
                ray.options = kw
                return self

            def remote(self, root, run_id):
                return ("ref", run_id)
        return Task()

    def wait(self, refs, num_returns=1, timeout=None):
        if timeout is not None:  # the grace wait after a Ctrl-C: nothing stops in time
            return [], list(refs)
        if self.interrupt:
            raise KeyboardInterrupt
        return refs[:1], refs[1:]

    def get(self, ref):
        if ref[1] in self.fail:
            raise RuntimeError(f"node lost under {ref[1]}")

    def cancel(self, ref, force=False):
        self.cancelled.append((ref[1], force))

    def shutdown(self):
        pass


def ray_executor(monkeypatch, fake, **kw):
    from dfg.ray_executor import RayExecutor
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return RayExecutor(**kw)


@pytest.mark.parametrize("fake, parallel, threads, options", [
    (FakeRay(cpus=16, nodes=((True, 8), (True, 8))), None, 1, {"num_cpus": 1}),       # default: a run per CPU
    (FakeRay(cpus=16, nodes=((True, 8), (True, 8), (False, 64))), 1, 8, {"num_cpus": 8}),  # a run fits one live node
    (FakeRay(cpus=16, nodes=((True, 8), (True, 8))), 4, 4, {"num_cpus": 4}),
    (FakeRay(cpus=16, gpus=4, nodes=((True, 16),)), None, 4, {"num_gpus": 1}),          # the CPUs shared by the GPUs
], ids=["a-run-per-cpu", "one-live-node", "parallel-4", "gpus"])
def test_ray_runs_get_their_share_of_the_cluster(fake, parallel, threads, options, monkeypatch):
    ex = ray_executor(monkeypatch, fake, parallel=parallel)
    assert (ex.threads, ex.options) == (threads, options)


def test_a_ray_task_that_died_fails_its_run_unless_the_run_had_finished(tmp_path, monkeypatch):
    ok = _run(tmp_path, "ok", state="finished", step=20)
    ok.write_json("final.json", {"last": {"top1": 0.5}})
    died = _run(tmp_path, "died", state="stopped", step=5)
    late = _run(tmp_path, "late", state="finished", step=20)  # the task failed after the run had finished
    fake = FakeRay(cpus=2, nodes=((True, 2),), fail={"died", "late"})
    ex = ray_executor(monkeypatch, fake, parallel=2)
    seen = []
    results = ex.run([ok, died, late], seen.append)
    assert fake.options == {"max_retries": 0, "num_cpus": 1}
    assert seen == results
    assert [(r["run_id"], r["state"], r["top1"]) for r in results] == [
        ("ok", "finished", 0.5), ("died", "failed", None), ("late", "failed", None)]
    assert results[2]["error"] == "ray task failed: RuntimeError: node lost under late"
    assert (died.status()["state"], died.status()["error"]) == (
        "failed", "ray task failed: RuntimeError: node lost under died")
    assert late.status()["state"] == "finished"


def test_ctrl_c_stops_running_ray_tasks_cancels_queued_ones_and_withdraws_late_stops(tmp_path, monkeypatch):
    live = _run(tmp_path, "live", state="running", step=3, **_live())
    queued = _run(tmp_path, "queued", state="created")
    fake = FakeRay(cpus=2, nodes=((True, 2),), interrupt=True)
    ex = ray_executor(monkeypatch, fake, parallel=2)
    with pytest.raises(KeyboardInterrupt):
        ex.run([live, queued], lambda r: None)
    assert fake.cancelled == [("queued", False), ("live", True)]
    assert not live.stop_requested() and not queued.stop_requested()


def test_ray_address_comes_from_the_environment_and_a_portless_address_is_left_to_ray(monkeypatch):
    from dfg.ray_executor import RayExecutor, _check_reachable
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    ex = RayExecutor()
    assert ex.address == "auto" and fake.inits == [{"address": "auto", "log_to_driver": False}]
    assert _check_reachable("ray://localhost") is None


# ---- dfg/metrics.py -------------------------------------------------------------------------------------------
def test_evaluate_takes_each_images_argmax_and_counts_images_and_minority_recall():
    from dfg.metrics import evaluate
    logits = torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])  # image i -> class 1, 2, 0
    batches = [(torch.tensor([0, 1, 2]), torch.tensor([1, 2, 1])), (torch.tensor([2, 0, 1]), torch.tensor([0, 1, 1]))]
    out = evaluate(lambda x: logits[x], batches, 3, minority=[1])
    assert out["n"] == 6
    assert out["confusion"] == [[1, 0, 0], [1, 2, 1], [0, 0, 1]]  # rows: true class
    assert out["minority_recall"] == pytest.approx(0.5) and out["top1"] == pytest.approx(4 / 6)


# ---- dfg/cli_args.py ------------------------------------------------------------------------------------------
def parse(argv):
    from dfg.cli_args import build_parser
    return build_parser().parse_args(argv)


def test_the_command_line_refuses_an_abbreviated_flag_and_a_missing_command(capsys):
    for argv in (["train", "--rh", "0.5"], []):
        with pytest.raises(SystemExit) as e:
            parse(argv)
        assert e.value.code == 2
    assert "--rh" in capsys.readouterr().err


def test_the_command_lines_defaults(tmp_path, monkeypatch):
    from dfg.config import default_data_root
    monkeypatch.setenv("DFG_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("DFG_RUNS_DIR", str(tmp_path / "runs"))
    sweep = parse(["sweep", "--presets", "demo", "--num-majority", "2"])
    assert (sweep.methods, sweep.num_majority) == ("dfg", 2)
    assert parse(["data"]).data_root == default_data_root() != parse(["runs"]).runs_dir
