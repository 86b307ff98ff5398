"""The app's state across runs and folders, and what it does with hand-edited or odd run folders: Fig. 6 averages
only runs of the selected run's setting; the ρ/δ sliders belong to one run folder, not to a run id; the loss
curves of a run deleted and made again under its id are read afresh; a started run is selected in the
sidebar; setup errors on the Start page are messages; damaged data.json / final.json records do not break the
pages; the Filter-weights page says when config.json no longer gives the recorded W*."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dfg import views
from dfg.runstore import Run
from dfg.views_losses import new_tail, update_tail
from dfg.views_results import last_eval, recall_figure, recall_rows
from dfg.views_weights import rho_accuracy
from test_app import app_on, goto


@pytest.fixture
def tiny(tiny_dfg_run, tmp_path):
    """(runs folder with a copy of the tiny run as "tiny", data root)."""
    shutil.copytree(tiny_dfg_run.run.path, tmp_path / "runs" / "tiny")
    return tmp_path / "runs", tiny_dfg_run.data_root


def edit(root: Path, run_id: str, name: str, **changes) -> dict:
    path = root / run_id / name
    obj = {**json.loads(path.read_text()), **changes}
    path.write_text(json.dumps(obj))
    return obj


def variant(root: Path, run_id: str, top1: float, **config) -> None:
    """A finished copy of the tiny run with other config values and another final top-1."""
    shutil.copytree(root / "tiny", root / run_id)
    edit(root, run_id, "config.json", **config)
    final = json.loads((root / run_id / "final.json").read_text())
    edit(root, run_id, "final.json", last={**final["last"], "top1": top1})


def test_fig6_averages_only_runs_of_the_selected_setting_and_names_the_others(tiny):
    """Before, Fig. 6 grouped every DFG run of the preset by ρ alone: runs of another length were averaged in
    and same-seed runs of different settings were dropped as repeats of each other."""
    root, _ = tiny
    base = json.loads((root / "tiny" / "final.json").read_text())["last"]["top1"]
    variant(root, "a", 0.40, rho=0.5)
    variant(root, "b", 0.50, rho=0.5, seed=1)
    variant(root, "c", 0.60, seed=1)
    variant(root, "long", 0.90, rho=0.5, steps=999, seed=2)        # another setting: left out
    variant(root, "discard", 0.10, official_discard_rho=True)       # ditto
    rows, note = rho_accuracy(root, Run(root, "tiny"))
    by_rho = {r["rho"]: (r["runs"], r["top1_mean"]) for r in rows}
    assert by_rho[0.5] == (2, pytest.approx(45.0))
    assert by_rho[0.75] == (2, pytest.approx((100 * base + 60.0) / 2))
    assert note.startswith("2 DFG run(s)") and "official_discard_rho, steps" in note
    rows_long, note_long = rho_accuracy(root, Run(root, "long"))  # from the long run: it has no second ρ
    assert rows_long == [] and "5 DFG run(s)" in note_long


def test_the_sliders_start_from_the_run_shown_when_another_folder_has_the_same_id(tiny, tmp_path, monkeypatch):
    root, data_root = tiny
    other = tmp_path / "other"
    shutil.copytree(root / "tiny", other / "tiny")
    edit(other, "tiny", "config.json", rho=0.5, delta=0.9)
    at = goto(app_on(root, data_root, monkeypatch), "filter_weights")
    assert (at.slider(key="fw.rho.tiny").value, at.slider(key="fw.delta.tiny").value) == (0.75, 0.95)
    at.slider(key="fw.rho.tiny").set_value(0.2).run()
    at.text_input(key="runs_dir").set_value(str(other)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert (at.slider(key="fw.rho.tiny").value, at.slider(key="fw.delta.tiny").value) == (0.5, 0.9)


def test_an_edited_config_is_flagged_beside_the_recorded_w_star(tiny, monkeypatch):
    root, data_root = tiny
    at = goto(app_on(root, data_root, monkeypatch), "filter_weights")
    assert not at.warning and "equals the one recorded" in " ".join(c.value for c in at.caption)
    edit(root, "tiny", "config.json", rho=0.5)
    at.run()
    assert any("does not give the W* recorded" in w.value for w in at.warning)
    recorded = Run(root, "tiny").load_filter_weights(20)["w_star"]
    tables = [d.value.to_numpy() for d in at.dataframe]
    assert any(t.dtype.kind == "f" and t.shape == recorded.shape and np.allclose(t, recorded) for t in tables)


def test_a_run_trained_without_rho_says_the_slider_does_not_change_it(tiny, monkeypatch):
    root, data_root = tiny
    at = goto(app_on(root, data_root, monkeypatch), "filter_weights")
    edit(root, "tiny", "config.json", official_discard_rho=True)
    at.run()
    assert any("official_discard_rho=true" in c.value for c in at.caption)


def test_live_losses_read_a_run_made_again_under_its_id_from_its_start(tiny):
    """Before, the tail kept its byte offset: the deleted run's rows stayed and the new file was read from
    the middle (398 points shown for a 700-row run)."""
    root, _ = tiny
    run = Run(root, "tiny")
    tail = new_tail()
    update_tail(tail, run)
    assert len(tail["train"]["step"]) > 0
    shutil.rmtree(root / "tiny")
    new = Run.create(root, "tiny", {"method": "dfg"})
    rows = [{"kind": "train", "step": s, "L_D": float(s)} for s in range(1, 701)]
    new.append_metrics(rows)
    update_tail(tail, new)
    assert tail["train"]["step"].tolist() == list(range(1, 701))
    assert tail["train"]["L_D"].tolist() == [float(s) for s in range(1, 701)]


def test_a_started_run_is_listed_and_selected_in_the_sidebar(tiny, monkeypatch):
    root, data_root = tiny

    def fake_start(cfg, where, run_id=None):
        shutil.copytree(Path(where) / "tiny", Path(where) / run_id)
        return Run(where, run_id)
    monkeypatch.setattr(views, "start_run", fake_start)
    at = goto(app_on(root, data_root, monkeypatch), "train")
    at.text_input(key="train.run_id").set_value("newrun")
    at.button(key="train.start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="sidebar.run").value == "newrun" and "newrun" in at.selectbox(key="sidebar.run").options
    assert [t.value for t in at.toast] == ["Started newrun in the background."]
    at.selectbox(key="sidebar.run").select("tiny").run()  # the user's next pick is not overridden
    assert at.selectbox(key="sidebar.run").value == "tiny"


def test_the_start_page_reports_setup_errors(tmp_path, tiny, monkeypatch):
    _, data_root = tiny
    (tmp_path / "afile").write_text("")
    at = app_on(tmp_path / "afile" / "runs", data_root, monkeypatch)  # a runs folder under a file
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(e.value.startswith("Not started") for e in at.error)
    monkeypatch.setenv(views.DEMO_OVERRIDES_ENV, "steps")
    at.run()
    assert not at.exception and any(views.DEMO_OVERRIDES_ENV in e.value for e in at.error)


def test_runs_folder_expands_home_and_app_runs_store_an_absolute_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert views.runs_folder("~/dfg_runs") == str(tmp_path / "dfg_runs")
    assert views.runs_folder("  ") == views.runs_folder(views.default_runs_dir())
    seen = []
    monkeypatch.setattr("dfg.jobs.submit", lambda cfg, root, run_id: seen.append(cfg))
    monkeypatch.chdir(tmp_path)
    views.start_run(views.make_config("demo", {"data_root": "data"}), tmp_path / "runs", "r")
    assert seen[0].data_root == str(tmp_path / "data")


@pytest.mark.parametrize("damage", ["data_list", "recall_null", "recall_missing", "top1_text", "last_list"])
def test_damaged_records_do_not_break_the_results_and_filter_weights_pages(tiny, monkeypatch, damage):
    """One run's hand-edited data.json or final.json: before, Results and Filter weights raised for every run."""
    root, data_root = tiny
    shutil.copytree(root / "tiny", root / "bad")
    final = json.loads((root / "bad" / "final.json").read_text())
    if damage == "data_list":
        (root / "bad" / "data.json").write_text("[1, 2]")
    elif damage == "last_list":
        edit(root, "bad", "final.json", last=[1, 2])
    else:
        last = dict(final["last"])
        if damage == "recall_null":
            last["per_class_recall"] = None
        elif damage == "recall_missing":
            del last["per_class_recall"]
        else:
            last["top1"] = "n/a"
        edit(root, "bad", "final.json", last=last)
    at = app_on(root, data_root, monkeypatch)
    for rid in ("tiny", "bad"):
        at.selectbox(key="sidebar.run").select(rid).run()
        for page in ("results", "filter_weights"):
            goto(at, page)
    if damage != "data_list":  # the damaged final record is not drawn; the eval rows of metrics.jsonl are
        ev = last_eval(Run(root, "bad"))
        assert ev is None or ev.get("kind") == "eval"


def test_a_class_without_test_images_has_no_recall_bar(tiny):
    root, _ = tiny
    run = Run(root, "tiny")
    ev = dict(run.read_json("final.json")["last"])
    cm = [row[:] for row in ev["confusion"]]
    cm[3] = [0] * len(cm)
    ev["confusion"], ev["per_class_recall"] = cm, [*ev["per_class_recall"][:3], 0.0, *ev["per_class_recall"][4:]]
    fig = recall_figure(run, ev)
    bars = fig.data[0]
    assert bars.y[3] is None and bars.text[3] == "" and bars.y[2] == ev["per_class_recall"][2]
    assert any(a.text == "no test images" for a in fig.layout.annotations)
    assert recall_rows(run, ev)[3]["recall"] is None and recall_rows(run, ev)[2]["recall"] is not None


def test_the_train_form_notes_a_value_the_method_does_not_read(tiny, monkeypatch):
    root, data_root = tiny
    at = goto(app_on(root, data_root, monkeypatch), "train")
    at.selectbox(key="train.method").select("original").run()
    assert not at.info or not any("ignores" in i.value for i in at.info)
    at.number_input(key="train.demo.original.rho").set_value(0.5).run()
    assert any(i.value.startswith("rho is read by the GAN methods") for i in at.info)


def test_grad_cam_offers_a_run_that_gets_its_checkpoint_and_names_each_columns_step(tiny, monkeypatch):
    """Before, a column's picker kept its value when the runs it offers changed (a run got its first
    checkpoint; another folder with this id): a stale "—" hid them. The page named no checkpoint step."""
    from test_app import cam_picker
    root, data_root = tiny
    shutil.copytree(root / "tiny", root / "d2", ignore=shutil.ignore_patterns("checkpoint*"))
    at = app_on(root, data_root, monkeypatch)
    at.selectbox(key="sidebar.run").select("tiny").run()
    goto(at, "gradcam")
    assert cam_picker(at, "dfg", "tiny").options == ["—", "tiny"]
    cam_picker(at, "dfg", "tiny").select("—").run()
    shutil.copy(root / "tiny" / "checkpoint.pt", root / "d2" / "checkpoint.pt")  # d2's first checkpoint
    at.run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    picker = cam_picker(at, "dfg", "tiny")
    assert picker.options[0] == "—" and sorted(picker.options[1:]) == ["d2", "tiny"] and picker.value == "tiny"
    step = json.loads((root / "tiny" / "final.json").read_text())["last"]["step"]
    assert f"tiny, step {step}" in [c.value for c in at.caption]


def test_embeddings_refuse_a_config_edited_after_their_cached_result(tiny, monkeypatch):
    """Before, a cached embedding (on disk, or in the page's cache) was shown for an edited config.json, with
    the hover images of another test subset or an IndexError."""
    from dfg.embeddings import embed_run
    from dfg.checkpoint import CheckpointError
    root, data_root = tiny
    run = Run(root, "tiny")
    first = embed_run(run, n=100)
    assert first["cache"] is None and embed_run(run, n=100)["cache"] == "memory"
    edit(root, "tiny", "config.json", limit_test=100)
    with pytest.raises(CheckpointError, match="limit_test: 200 -> 100"):
        embed_run(Run(root, "tiny"), n=100)
    at = app_on(root, data_root, monkeypatch)
    goto(at, "embeddings")
    assert any("limit_test: 200 -> 100" in e.value for e in at.error)


def test_a_run_trained_on_a_gpu_is_inspected_on_a_machine_without_one(tiny, monkeypatch):
    import torch
    root, data_root = tiny
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    edit(root, "tiny", "config.json", device="cuda")
    at = app_on(root, data_root, monkeypatch)
    for page in ("embeddings", "gradcam"):
        goto(at, page)
        assert not at.error, (page, [e.value for e in at.error])


def test_grad_cam_says_when_the_picked_runs_trained_on_other_majority_classes(tiny, monkeypatch):
    from dfg.views_inspect import majority_draws, majority_note
    root, data_root = tiny
    shutil.copytree(root / "tiny", root / "other")
    data = json.loads((root / "tiny" / "data.json").read_text())
    edit(root, "other", "data.json", majority=[c for c in range(10) if c not in data["majority"]][:2])
    draws = majority_draws([Run(root, "tiny"), Run(root, "other")])
    assert sorted(map(sorted, draws.values())) == [["other"], ["tiny"]]
    note = majority_note([Run(root, "tiny"), Run(root, "other")])
    assert note.startswith("The picked runs trained with different majority classes: tiny: {")
    assert majority_note([Run(root, "tiny")]) == ""
    at = app_on(root, data_root, monkeypatch)
    at.selectbox(key="sidebar.run").select("tiny").run()
    goto(at, "gradcam")
    assert not any("different majority classes" in c.value for c in at.caption)  # one column: the newest run
