"""The Streamlit app (app.py + pages/) driven by streamlit.testing.v1.AppTest against a real tiny DFG run:
every page renders and shows the run's real numbers; the ρ slider recomputes W* exactly as
dfg.filter_weights.attention does; the Train page refuses an invalid ρ and creates nothing."""
import base64
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from dfg.config import ConfigError, make_config
from dfg.filter_weights import attention
from dfg.presets import PRESETS
from dfg.runstore import Run
from dfg.views import field_of_error
from dfg.views_weights import delta_max, weight_history
from dfg.views_losses import ema, new_tail, present_keys, update_tail

APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.fixture(scope="module")
def runs(tiny_dfg_run, tmp_path_factory):
    """A private copy of the tiny run's folder (the pages may write caches into a run folder)."""
    root = tmp_path_factory.mktemp("app_runs")
    shutil.copytree(tiny_dfg_run.run.path, root / "tiny")
    return root, tiny_dfg_run.data_root


def app_on(root, data_root, monkeypatch) -> AppTest:
    """The app on its first page, with runs under root and data under data_root."""
    monkeypatch.setenv("DFG_RUNS_DIR", str(root))
    monkeypatch.setenv("DFG_DATA_ROOT", str(data_root))
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture
def app(runs, monkeypatch):
    return app_on(*runs, monkeypatch)


def goto(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def plotly_spec(at: AppTest, key: str) -> dict:
    """A chart's figure as JSON, with plotly's base64 arrays ({"dtype", "bdata"}) decoded into lists."""
    def plain(v):
        if isinstance(v, dict) and set(v) >= {"dtype", "bdata"}:
            arr = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]).newbyteorder("<"))
            return arr.reshape([int(d) for d in str(v["shape"]).split(",")]).tolist() if v.get("shape") \
                else arr.tolist()
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return [plain(x) for x in v] if isinstance(v, list) else v
    return plain(json.loads(at.get_by_key(key).proto.spec))


def test_every_page_shows_the_runs_numbers(app, runs):
    root, _ = runs
    run = Run(root, "tiny")
    rows, _ = run.read_metrics()
    train = [r for r in rows if r["kind"] == "train"]
    final = run.read_json("final.json")["last"]

    # sidebar: the run is selected and in the URL
    assert app.selectbox[0].value == "tiny" and app.query_params["run"] == "tiny"
    assert app.button[0].label == "Start the demo run" and len(app.image) == 1

    goto(app, "train")
    bars = [p.proto.text for p in app.progress]
    assert any("tiny" in t and "finished at step 20/20" in t for t in bars), bars
    assert app.number_input(key="train.demo.dfg.rho").value == pytest.approx(0.75)

    goto(app, "losses")
    spec = plotly_spec(app, "loss.chart.L_D")
    assert spec["data"][0]["x"] == [r["step"] for r in train]
    assert spec["data"][0]["y"] == pytest.approx([r["L_D"] for r in train])
    acc = plotly_spec(app, "loss.chart.top1")["data"][0]
    assert acc["y"][-1] == pytest.approx(final["top1"])
    tail = new_tail()
    update_tail(tail, run)
    assert len(app.get("plotly_chart")) == len(present_keys({"tiny": tail})) + 1

    goto(app, "filter_weights")
    recorded = run.load_filter_weights(20)["w_star"]
    assert np.allclose(plotly_spec(app, "fw.w_star")["data"][0]["z"], recorded, atol=1e-6)
    table = app.dataframe[0].value
    assert table["deactivated"].tolist() == (recorded == 0).sum(1).tolist()

    goto(app, "results")
    summary = app.dataframe[0].value
    assert summary["top1 (%)"].iloc[0] == f"{100 * final['top1']:.2f}"
    recall = plotly_spec(app, "res.recall.tiny")["data"][0]["y"]
    assert recall == pytest.approx(final["per_class_recall"])

    goto(app, "embeddings")  # limit_test=200: 200 real test images and as many generated features (the slider says 300)
    assert any("200 real and 200 generated features, checkpoint step 20" in c.value for c in app.caption)
    assert any("crosses: generated G(z, ŷ) with the run's W*" in c.value for c in app.caption)

    goto(app, "gradcam")  # 6 test images, each shown raw and through the one DFG run
    captions = [i.proto.imgs[0].caption for i in app.image]
    assert len(captions) == 12
    assert sum(c.startswith("DFG: ") and "%" in c for c in captions) == 6


def test_results_page_shows_each_runs_images_per_class_and_its_data_warnings(app, runs):
    root, _ = runs
    path = Path(root) / "tiny" / "data.json"
    saved = path.read_text()
    data = json.loads(saved)
    note = "svhn: class 9 ('9') has 4659 training images, fewer than the 5000 its step imbalance asks for"
    try:
        path.write_text(json.dumps({**data, "warnings": [note]}))
        goto(app, "results")
    finally:
        path.write_text(saved)
    assert [w.value for w in app.warning] == [f"tiny: {note}"]
    table = next(d.value for d in app.dataframe if "available" in d.value.columns)
    assert table["train"].tolist() == [c["kept"] for c in data["class_counts"]]
    assert table["test"].tolist() == [c["test"] for c in data["class_counts"]]
    roles = table["role"].tolist()
    assert data["majority"] and data["minority"]  # the tiny run is step-imbalanced
    assert [i for i, r in enumerate(roles) if r == "majority"] == sorted(data["majority"])
    assert [i for i, r in enumerate(roles) if r == "minority"] == sorted(data["minority"])


def test_rho_slider_recomputes_w_star_like_attention(app, runs):
    root, _ = runs
    stored = Run(root, "tiny").load_filter_weights(20)
    goto(app, "filter_weights")
    app.slider(key="fw.rho.tiny").set_value(0.3).run()
    assert not app.exception
    expected = attention(torch.as_tensor(stored["w_source"]), torch.as_tensor(stored["w_target"]),
                         rho=0.3, delta=0.95).numpy()
    shown = plotly_spec(app, "fw.w_star")["data"][0]["z"]
    values = app.dataframe[1].value.to_numpy()
    assert np.allclose(shown, expected, atol=1e-6) and np.allclose(values, expected, atol=1e-6)
    assert not np.allclose(expected, stored["w_star"])  # ρ really changed W*
    assert app.dataframe[0].value["deactivated"].tolist() == (expected == 0).sum(1).tolist()


def test_delta_slider_reaches_above_every_weight(app, runs):
    """δ's top lies above the largest recorded weight, so W* can be all zero; such a class has no strongest
    filter."""
    root, _ = runs
    run = Run(root, "tiny")
    top = max(float(np.max(run.load_filter_weights(s)[k])) for s in run.filter_weight_steps()
              for k in ("w_source", "w_target"))
    goto(app, "filter_weights")
    slider = app.slider(key="fw.delta.tiny")
    assert slider.max > top
    slider.set_value(slider.max).run()
    assert not app.exception
    table = app.dataframe[0].value
    assert table["active"].tolist() == [0] * len(table) and set(table["strongest filter"]) == {"—"}


def test_weight_history_reads_each_file_once_and_a_rewritten_one_again(runs, tmp_path, monkeypatch):
    """Slider moves rerun the page; the weight files are read once, and again only when rewritten."""
    root, _ = runs
    shutil.copytree(root / "tiny", tmp_path / "tiny")
    run = Run(tmp_path, "tiny")
    steps = run.filter_weight_steps()
    reads = []
    real = Run.load_filter_weights
    monkeypatch.setattr(Run, "load_filter_weights", lambda self, step: reads.append(step) or real(self, step))
    first, _ = weight_history(run)
    again, problems = weight_history(run)
    assert reads == steps and sorted(again) == steps and not problems
    assert all(again[s] is first[s] for s in steps)  # served from memory
    stored = {k: v for k, v in first[steps[-1]].items() if k != "step"}
    run.save_filter_weights(steps[-1], **{**stored, "w_target": stored["w_target"] + 1.0})
    third, _ = weight_history(run)
    assert reads == steps + [steps[-1]]
    assert np.allclose(third[steps[-1]]["w_target"], stored["w_target"] + 1.0)
    assert delta_max(third, 0.95) > float(stored["w_target"].max()) + 1.0
    # the process keeps the files of the 4 runs viewed last: a fifth evicts this one, read again when viewed
    from dfg import views_weights
    for i in range(4):
        shutil.copytree(root / "tiny", tmp_path / f"other{i}")
        weight_history(Run(tmp_path, f"other{i}"))
    assert len({Path(k[0]).parent for k in views_weights._LOADED}) == 4
    reads.clear()
    weight_history(run)
    assert reads == steps


def test_a_damaged_weight_file_is_named_and_the_other_steps_still_show(runs, tmp_path, monkeypatch):
    root, data_root = runs
    shutil.copytree(root / "tiny", tmp_path / "tiny")
    steps = Run(tmp_path, "tiny").filter_weight_steps()
    bad = tmp_path / "tiny" / "filter_weights" / f"w_{steps[-1]:08d}.npz"
    bad.write_bytes(b"not an npz file")
    np.savez(tmp_path / "tiny" / "filter_weights" / f"w_{steps[0]:08d}.npz", w_star=np.ones((3, 4)))
    at = goto(app_on(tmp_path, data_root, monkeypatch), "filter_weights")
    warnings = [w.value for w in at.warning]
    assert any(str(bad) in w and "damaged" in w for w in warnings), warnings
    assert any("does not hold W(E_S), W(E) and W*" in w for w in warnings), warnings
    assert list(at.select_slider(key="fw.step.tiny").options) == [str(s) for s in steps[1:-1]]


def test_sidebar_keeps_the_users_pick_while_a_run_moves_and_follows_links(runs, tmp_path, monkeypatch):
    """A live run rewrites its label ("running 380/600") between two refreshes; the pick must survive it."""
    root, data_root = runs
    for name in ("a", "b"):
        shutil.copytree(root / "tiny", tmp_path / name)
    at = app_on(tmp_path, data_root, monkeypatch)
    moving = Run(tmp_path, at.selectbox(key="sidebar.run").value)
    other = "a" if moving.id == "b" else "b"
    moving.set_status(step=moving.raw_status()["step"] - 1)  # what a worker does every log_every steps
    at.selectbox(key="sidebar.run").select(other).run()
    assert at.selectbox(key="sidebar.run").value == other and at.query_params["run"] == other
    # a served app keeps a selectbox's value as its shown text: the options must not carry the live step
    assert sorted(at.selectbox(key="sidebar.run").options) == ["a", "b"]
    moving.set_status(step=moving.raw_status()["step"] - 1)
    at.run()
    assert at.selectbox(key="sidebar.run").value == other
    assert any(c.value.startswith(("finished", "running")) for c in at.sidebar.caption)  # state under the box
    at.query_params["run"] = moving.id  # a link to the other run (or a page that started one)
    at.run()
    assert at.selectbox(key="sidebar.run").value == moving.id
    shutil.rmtree(tmp_path / moving.id)  # the selected run disappears: the sidebar falls back
    at.run()
    assert at.selectbox(key="sidebar.run").value == other and not at.exception


def test_gradcam_columns_follow_a_new_sidebar_pick(runs, tmp_path, monkeypatch):
    root, data_root = runs
    for name in ("d1", "d2"):
        shutil.copytree(root / "tiny", tmp_path / name)
    at = app_on(tmp_path, data_root, monkeypatch)
    at.selectbox(key="sidebar.run").select("d1").run()
    goto(at, "gradcam")
    assert cam_picker(at, "dfg", "d1").value == "d1"
    at.selectbox(key="sidebar.run").select("d2").run()
    assert not at.exception and cam_picker(at, "dfg", "d2").value == "d2"


def cam_picker(at: AppTest, method: str, run_id: str):
    """The Grad-CAM page's picker of a method's column for a sidebar run (its key also names the folder)."""
    found = [s for s in at.selectbox if s.key and s.key.startswith(f"cam.{method}.{run_id}.")]
    assert len(found) == 1, [s.key for s in at.selectbox]
    return found[0]


def test_progress_of_a_run_whose_folder_is_gone(runs, tmp_path):
    from dfg import views
    root, _ = runs
    shutil.copytree(root / "tiny", tmp_path / "gone")
    run = Run(tmp_path, "gone")
    assert views.progress(run)["state"] == "finished"
    shutil.rmtree(run.path)
    p = views.progress(run)  # a live chart still lists it until the next full page run
    assert p["state"] == "missing" and not p["active"] and "gone" in p["text"]


def open_train_page(tmp_path, monkeypatch):
    """The app on its Train page, with runs and data under tmp_path."""
    return goto(app_on(tmp_path / "runs", tmp_path / "data", monkeypatch), "train")


def test_train_page_refuses_invalid_rho_and_creates_nothing(tmp_path, monkeypatch):
    at = open_train_page(tmp_path, monkeypatch)
    at.number_input(key="train.demo.dfg.rho").set_value(1.5).run()
    assert [e.value for e in at.error] == ["rho=1.5 is invalid: must lie in [0, 1]"]
    at.button(key="train.start").click().run()
    assert any(e.value.startswith("Not started") and "rho" in e.value for e in at.error)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("preset", list(PRESETS))
def test_train_page_renders_every_preset(preset, tmp_path, monkeypatch):
    """Each field's widget follows the field's type (svhn's ratio=10 is a float field given as an int)."""
    at = open_train_page(tmp_path, monkeypatch)
    at.selectbox(key="train.preset").select(preset).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.number_input(key=f"train.{preset}.dfg.ratio").value == float(PRESETS[preset].ratio)


def test_train_page_offers_the_cuda_switches_with_the_config_defaults(tmp_path, monkeypatch):
    at = open_train_page(tmp_path, monkeypatch)
    boxes = {name: at.checkbox(key=f"train.demo.dfg.{name}") for name in ("tf32", "deterministic", "cuda_graphs")}
    assert {name: box.value for name, box in boxes.items()} == {"tf32": False, "deterministic": False,
                                                                "cuda_graphs": True}
    assert "CUDA graphs" in boxes["cuda_graphs"].label
    boxes["cuda_graphs"].uncheck().run()
    assert not at.checkbox(key="train.demo.dfg.cuda_graphs").value and not at.error and not at.exception


def test_live_losses_read_only_new_rows(tiny_dfg_run, tmp_path):
    """The page's tail reads rows appended since its last poll, and starts over when the file shrinks."""
    src = tiny_dfg_run.run.path / "metrics.jsonl"
    lines = src.read_bytes().splitlines(keepends=True)
    run = Run.create(tmp_path, "copy", tiny_dfg_run.run.config())
    (run.path / "metrics.jsonl").write_bytes(b"".join(lines[:3]) + lines[3][:10])  # a torn 4th line
    tail = new_tail()
    first = update_tail(tail, run)
    assert first == 3 and update_tail(tail, run) == 0
    (run.path / "metrics.jsonl").write_bytes(b"".join(lines))
    assert update_tail(tail, run) == len(lines) - 3
    all_rows, _ = tiny_dfg_run.run.read_metrics()
    train = [r for r in all_rows if r["kind"] == "train"]
    assert tail["train"]["step"].tolist() == [r["step"] for r in train]
    assert tail["train"]["L_D"].tolist() == pytest.approx([r["L_D"] for r in train])
    (run.path / "metrics.jsonl").write_bytes(b"".join(lines[:2]))  # a resume truncated the file
    assert update_tail(tail, run) == 2 and len(tail["train"]["step"]) + len(tail["eval"]["step"]) == 2


def test_ema_is_debiased():
    assert ema([4.0, 4.0, 4.0], 0.9) == pytest.approx([4.0, 4.0, 4.0])
    assert ema([0.0, 10.0], 0.5) == pytest.approx([0.0, 5 / 0.75])
    assert ema([1.0, 2.0], 0.0).tolist() == [1.0, 2.0]
    x = np.random.default_rng(0).normal(size=1000)  # the blockwise form equals the recursion
    s, w, loop = 0.0, 0.0, []
    for v in x:
        s, w = 0.9 * s + 0.1 * v, 0.9 * w + 0.1
        loop.append(s / w)
    assert ema(x, 0.9) == pytest.approx(loop)


@pytest.mark.parametrize("overrides, field", [({"rho": 1.5}, "rho"), ({"alpha": 0.5}, "gamma"),
                                              ({"lr_critic": 2.0}, "lr_critic"), ({"adam_beta1": 1.0}, "adam_beta1"),
                                              ({"n_w": "ten"}, "n_w"), ({"steps": 0}, "steps")])
def test_config_errors_map_to_the_field_they_name(overrides, field):
    with pytest.raises(ConfigError) as err:
        make_config("demo", overrides)
    assert field_of_error(err.value) == field


def test_resume_on_the_train_page_launches_the_run_and_the_list_shows_it_active(runs, tmp_path, monkeypatch):
    """Resume launches the worker (dfg.jobs.launch), reruns the whole page (so the list polls again) and
    says so; the stopped run's Resume button gives way to Stop."""
    root, data_root = runs
    shutil.copytree(root / "tiny", tmp_path / "r")
    Run(tmp_path, "r").set_status(state="stopped", error=None)
    launched = []

    def fake_launch(run):
        launched.append(run.id)
        run.set_status(state="created")  # what jobs.launch leaves before its worker starts
        return 0
    monkeypatch.setattr("dfg.jobs.launch", fake_launch)
    at = goto(app_on(tmp_path, data_root, monkeypatch), "train")
    assert not [b for b in at.button if b.key == "stop.r"]
    at.button(key="resume.r").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert launched == ["r"]
    assert [t.value for t in at.toast] == ["Resumed r from its last checkpoint"]
    keys = {b.key for b in at.button}
    assert "stop.r" in keys and "resume.r" not in keys


def test_a_damaged_run_folder_is_named_and_the_other_runs_still_show(runs, tmp_path, monkeypatch):
    """One config.json that is not an object, one that is not JSON, one with a ρ of the wrong type: the app,
    the Results and Filter-weights pages keep working for the healthy run and name the damaged ones."""
    root, data_root = runs
    shutil.copytree(root / "tiny", tmp_path / "tiny")
    (tmp_path / "notobj").mkdir()
    (tmp_path / "notobj" / "config.json").write_text("[]")
    shutil.copytree(root / "tiny", tmp_path / "broken")
    (tmp_path / "broken" / "config.json").write_text('{"method": "dfg", "rho": ')
    shutil.copytree(root / "tiny", tmp_path / "oddrho")
    cfg = json.loads((tmp_path / "oddrho" / "config.json").read_text())
    (tmp_path / "oddrho" / "config.json").write_text(json.dumps({**cfg, "rho": "abc"}))
    at = app_on(tmp_path, data_root, monkeypatch)
    at.selectbox(key="sidebar.run").select("tiny").run()
    for page in ("results", "filter_weights", "gradcam", "losses", "train"):
        goto(at, page)
    goto(at, "results")
    left_out = " ".join(w.value for w in at.warning)
    assert "notobj" in left_out and "broken" in left_out and "oddrho" not in left_out
    for bad, pages in (("broken", ("filter_weights", "gradcam")), ("notobj", ("filter_weights", "gradcam")),
                       ("oddrho", ("filter_weights",))):  # Grad-CAM has no use for ρ: it shows oddrho
        at.selectbox(key="sidebar.run").select(bad).run()
        for page in pages:
            goto(at, page)
            assert any(bad in e.value and "config.json" in e.value for e in at.error), (bad, page)


def test_a_resumed_run_counts_as_active_until_its_worker_reports(runs, tmp_path):
    """Resume starts a worker but status.json is the worker's alone: until it writes, the run still reads
    "stopped". A worker launched after the last status write keeps the pages polling."""
    from dfg import views
    root, _ = runs
    shutil.copytree(root / "tiny", tmp_path / "r")
    run = Run(tmp_path, "r")
    run.set_status(state="stopped")
    assert not views.progress(run)["active"] and views.progress(run)["resumable"]
    (run.path / "worker.pid").write_text(str(os.getpid()))  # a live process, launched after the status write
    p = views.progress(run)
    assert p["active"] and not p["resumable"] and "waiting for its worker" in p["text"]
    run.set_status(state="stopped")  # the worker has reported (and stopped again)
    assert not views.progress(run)["active"]
    (run.path / "worker.pid").write_text("999999999")  # no such process
    assert not views.progress(run)["active"]


def test_train_page_warns_before_a_run_beside_one_on_every_core(runs, tmp_path, monkeypatch):
    from dfg import views
    root, data_root = runs
    shutil.copytree(root / "tiny", tmp_path / "r")
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    (tmp_path / "r" / "config.json").write_text(json.dumps({**cfg, "threads": 0}))
    Run(tmp_path, "r").set_status(state="created")  # active, as a run whose worker is starting
    assert views.all_core_runs(tmp_path) == ["r"]
    at = goto(app_on(tmp_path, data_root, monkeypatch), "train")
    assert any("r trains on every core" in w.value for w in at.warning)
    (tmp_path / "r" / "config.json").write_text(json.dumps({**cfg, "threads": 1}))
    assert views.all_core_runs(tmp_path) == []
    Run(tmp_path, "r").set_status(state="finished")
    (tmp_path / "r" / "config.json").write_text(json.dumps({**cfg, "threads": 0}))
    assert views.all_core_runs(tmp_path) == []


def test_filter_weights_page_follows_a_training_run(runs, tmp_path, monkeypatch):
    """With an active run the page renders with its polling fragment (every 5 s in a served app, where it
    reruns the page when a step is recorded; AppTest does not run timed fragments) and a rerun shows the
    newly recorded step."""
    root, data_root = runs
    shutil.copytree(root / "tiny", tmp_path / "r")
    at = goto(app_on(tmp_path, data_root, monkeypatch), "filter_weights")
    assert not at.exception
    Run(tmp_path, "r").set_status(state="created")  # active
    at.run()
    before = list(at.select_slider(key="fw.step.r").options)
    run = Run(tmp_path, "r")
    last = run.filter_weight_steps()[-1]
    stored = {k: v for k, v in run.load_filter_weights(last).items() if k != "step"}
    run.save_filter_weights(last + 10, **stored)  # what the worker writes at the next nW
    at.run()
    assert list(at.select_slider(key="fw.step.r").options) == before + [str(last + 10)]


@pytest.mark.parametrize("extra", [b"", b'{"kind": "train", "step": 5}, {"kind": "train", "step": 6}\n',
                                   b"[1, 2]\n", b"\n", b'{"kind": "eval"}]\n[{"kind": "train"}\n', b"7\n"])
def test_metrics_are_read_as_one_json_value_per_line_whatever_the_file_holds(tmp_path, extra):
    """read_metrics parses all lines at once when it can; a line that holds two values, no value or a
    bracket gives the rows a line-by-line parse gives (each whole line one JSON object, others left out)."""
    good = [{"kind": "train", "step": s, "L_D": -s / 3} for s in range(1, 5)]
    text = b"".join(json.dumps(r).encode() + b"\n" for r in good[:2]) + extra + \
        b"".join(json.dumps(r).encode() + b"\n" for r in good[2:])
    run = Run.create(tmp_path, "r", {})
    (run.path / "metrics.jsonl").write_bytes(text + b'{"kind": "train", "st')  # and a row still being written
    expected = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            expected.append(value)
    rows, offset = run.read_metrics()
    assert rows == expected and offset == len(text)
    assert [r for r in rows if "L_D" in r] == good


def test_damaged_metric_lines_and_weight_files_are_left_out_not_raised(tiny_dfg_run, tmp_path):
    """Bytes that are not UTF-8 (a disk that zero-filled or scrambled a block), a row without a step and a
    hand-edited non-numeric loss: the readers skip them and keep the rest; a cut .npz is named, not raised."""
    from dfg.views_losses import metric_figure
    from dfg.views_weights import weight_history

    run = Run.create(tmp_path, "copy", tiny_dfg_run.run.config())
    lines = (tiny_dfg_run.run.path / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    bad = [b'{"kind": "train", "step": 3, "L_D": "\xff\xfe"}\n', b"\x00\x00\x00\x00garbage\n",
           b'{"kind": "train", "L_D": 1.0}\n', b'{"kind": "train", "step": 4, "L_D": "x", "L_G": 2.5}\n']
    (run.path / "metrics.jsonl").write_bytes(lines[0] + b"".join(bad) + b"".join(lines[1:]))
    rows, _ = run.read_metrics()
    assert len(rows) == len(lines) + 2  # the two readable extra rows (no step; a text L_D) are still rows
    assert run.prepare_metrics(keep=True)  # a resume reads the file instead of failing on it
    tail = new_tail()
    update_tail(tail, run)
    steps = tail["train"]["step"].tolist()
    assert steps == [r["step"] for r in rows if r.get("kind") == "train" and "step" in r]
    assert np.isnan(tail["train"]["L_D"][steps.index(4)])  # the text L_D: no value
    fig = metric_figure({"copy": tail}, "L_D")
    assert len(fig.data[0].x) == int(np.isfinite(tail["train"]["L_D"]).sum()) == len(steps) - 1
    assert 4 in metric_figure({"copy": tail}, "L_G").data[0].x
    shutil.copytree(tiny_dfg_run.run.path / "filter_weights", run.path / "filter_weights", dirs_exist_ok=True)
    cut = sorted((run.path / "filter_weights").glob("w_*.npz"))[-1]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    history, problems = weight_history(run)
    assert sorted(history) == tiny_dfg_run.run.filter_weight_steps()[:-1]
    assert len(problems) == 1 and cut.name in problems[0] and "damaged" in problems[0]
