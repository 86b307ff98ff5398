"""The app with big runs (tiny synthetic stand-ins): long loss curves are thinned and only the shown runs'
rows stay in memory; Figure 5 draws a bounded number of steps; the δ slider keeps the user's value when a new
W recompute raises its top; the Train page lists every run with a Stop or Resume button however old; the
Results page does not read a training run's whole metrics.jsonl again for each figure and table."""
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dfg.runstore import Run
from dfg.views_losses import MAX_POINTS, ema
from dfg.views_weights import FIG5_STEPS, figure5
from test_app import app_on, goto, plotly_spec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from synthetic_runs import long_metrics  # noqa: E402


@pytest.fixture
def tiny(tiny_dfg_run, tmp_path):
    """(runs folder with a copy of the tiny run as "r", data root)."""
    shutil.copytree(tiny_dfg_run.run.path, tmp_path / "runs" / "r", ignore=shutil.ignore_patterns("checkpoint*"))
    return tmp_path / "runs", tiny_dfg_run.data_root


def test_live_losses_thin_long_curves_keep_spikes_and_only_the_shown_runs(tiny, monkeypatch):
    root, data_root = tiny
    shutil.copytree(root / "r", root / "other")
    ld = long_metrics(Run(root, "r"), 20_000, spike_at=12_345)
    at = app_on(root, data_root, monkeypatch)
    at.selectbox(key="sidebar.run").select("r").run()
    goto(at, "losses")
    trace = plotly_spec(at, "loss.chart.L_D")["data"][0]
    assert len(trace["x"]) <= MAX_POINTS + 2 and trace["x"][-1] == 20_000 and trace["x"][0] == 1
    assert max(trace["y"]) == pytest.approx(max(ld)) and 12_345 in trace["x"]  # the spike is kept
    assert plotly_spec(at, "loss.chart.top1")["data"][0]["x"] == list(range(1000, 20_001, 1000))  # 20: all drawn
    assert any("Thinned" in c.value and "r (20,000 rows)" in c.value for c in at.caption)

    at.slider(key="loss.smoothing").set_value(0.9).run()  # the EMA runs over every row, then is thinned
    smooth = plotly_spec(at, "loss.chart.L_D")["data"][1]
    assert len(smooth["x"]) <= MAX_POINTS + 2 and smooth["y"][-1] == pytest.approx(ema(ld, 0.9)[-1])

    assert set(at.session_state["loss.tails"]) == {f"{root}::r"}
    at.selectbox(key="sidebar.run").select("other").run()  # the page now shows only "other"
    assert not at.exception and set(at.session_state["loss.tails"]) == {f"{root}::other"}
    assert not any("Thinned" in c.value for c in at.caption)


def test_figure5_draws_about_twenty_steps_the_first_the_last_and_the_selected(tmp_path):
    rng = np.random.default_rng(0)
    history = {s: {"w_source": rng.uniform(0, 2, (3, 8)), "w_target": rng.uniform(0, 2, (3, 8))}
               for s in range(0, 2001, 10)}  # 201 recorded steps
    fig = figure5(Run(tmp_path, "x"), [0, 5], history, selected=1230)
    steps = [int(t.name.split()[1]) for t in fig.data if t.showlegend]
    assert len(fig.data) == 4 * len(steps) and len(steps) <= FIG5_STEPS + 3
    assert {0, 2000, 1230} <= set(steps) and steps == sorted(steps)
    few = {s: history[s] for s in range(0, 50, 10)}
    assert len(figure5(Run(tmp_path, "x"), [0], few).data) == 2 * 5  # few steps: every one


def record_steps(run: Run, steps, scale: float = 1.0) -> None:
    stored = {k: v for k, v in run.load_filter_weights(run.filter_weight_steps()[-1]).items() if k != "step"}
    for s in steps:
        run.save_filter_weights(s, **{**stored, "w_target": stored["w_target"] * scale})


def test_filter_weights_page_thins_figure5_and_says_so(tiny, monkeypatch):
    root, data_root = tiny
    record_steps(Run(root, "r"), range(30, 630, 10))  # 63 recorded steps
    at = goto(app_on(root, data_root, monkeypatch), "filter_weights")
    traces = plotly_spec(at, "fw.fig5")["data"]
    assert len(traces) <= 4 * (FIG5_STEPS + 3)
    assert any("Showing" in c.value and "of the 63 recorded steps" in c.value for c in at.caption)


def test_delta_slider_keeps_the_users_value_when_a_new_step_raises_its_top(tiny, monkeypatch):
    root, data_root = tiny
    run = Run(root, "r")
    at = goto(app_on(root, data_root, monkeypatch), "filter_weights")
    at.slider(key="fw.delta.r").set_value(0.5).run()
    before = at.slider(key="fw.delta.r").max
    record_steps(run, [30], scale=before + 3.0)  # a recompute with weights above the slider's top
    at.run()
    slider = at.slider(key="fw.delta.r")
    assert not at.exception and slider.value == pytest.approx(0.5)
    assert slider.max > float(run.load_filter_weights(30)["w_target"].max())  # δ above every weight: reachable
    slider.set_value(slider.max).run()
    assert set(at.dataframe[0].value["active"]) == {0}


def test_train_page_lists_every_active_and_resumable_run_however_old(tiny_dfg_run, tmp_path, monkeypatch):
    cfg, now = tiny_dfg_run.run.config(), time.time()
    for i, (rid, state) in enumerate([("old_active", "created"), ("old_stopped", "stopped")]
                                     + [(f"done{j:02d}", "finished") for j in range(14)]):
        Run.create(tmp_path, rid, cfg).set_status(state=state, created=now - 1000 + i)  # done13 is the newest
    at = goto(app_on(tmp_path, tiny_dfg_run.data_root, monkeypatch), "train")
    keys = {b.key for b in at.button}
    assert {"stop.old_active", "resume.old_stopped"} <= keys
    bars = [p.proto.text for p in at.progress]
    assert len(bars) == 12 and "done13" in bars[0] and "done04" in bars[9]
    assert "old_stopped" in bars[10] and "old_active" in bars[11]
    assert any(c.value.startswith("4 more runs") and "python -m dfg runs" in c.value for c in at.caption)


def test_results_page_reads_a_training_runs_newest_eval_without_reading_all_rows(tiny, monkeypatch):
    root, data_root = tiny
    run = Run(root, "r")
    (run.path / "final.json").unlink()
    run.set_status(state="stopped")
    rows, _ = run.read_metrics()
    newest = [r for r in rows if r["kind"] == "eval" and r.get("split", "test") == "test"][-1]
    newest = {**newest, "per_class_recall": [0.5] * len(newest["per_class_recall"])}
    with open(run.path / "metrics.jsonl", "a") as f:  # the newest eval row, then many train rows after it
        f.write(json.dumps(newest) + "\n")
        f.write("".join(json.dumps({"kind": "train", "step": 21 + i, "L_D": 0.0}) + "\n" for i in range(5000)))
    reads = []
    real = Run.read_metrics
    monkeypatch.setattr(Run, "read_metrics", lambda self, offset=0: reads.append(self.id) or real(self, offset))
    at = goto(app_on(root, data_root, monkeypatch), "results")
    assert plotly_spec(at, "res.recall.r")["data"][0]["y"] == newest["per_class_recall"]
    assert reads.count("r") <= 1, reads
