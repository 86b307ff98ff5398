"""Bad input gets one clear message and leaves no run folder; nothing from a run folder is executed
(checkpoints, config.json, filter weights); folders cannot escape the data root; the app binds to
localhost; two runs written at once are read by several readers without a lost, torn or repeated row."""
import json
import multiprocessing
import os
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfg import cli
from dfg.checkpoint import CheckpointError, load_checkpoint, load_method_state, save_checkpoint
from dfg.config import ConfigError, from_dict, make_config
from dfg.data import DataError, build_data
from dfg.jobs import submit
from dfg.loop import load_data, setup, train
from dfg.preflight import preflight
from dfg.runstore import Run, RunError, check_run_id, list_runs
from dfg.source import pretrain_source

REPO = Path(__file__).resolve().parent.parent
TINY = dict(steps=5, ckpt_every=5, log_every=5, eval_every=5, pretrain_steps=50, head_refit_steps=10,
            limit_test=100, batch_size=16, fw_per_class=3, threads=1, source_per_class=100)
TINY_ARGS = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("reliability-data"))
    cfg = make_config("demo", {**TINY, "data_root": root})
    torch.set_num_threads(1)
    pretrain_source(cfg, load_data(cfg).in_channels, torch.device("cpu"))
    return root


@pytest.fixture(scope="module")
def finished(data_root, tmp_path_factory):
    """A finished 5-step run with its checkpoint."""
    cfg = make_config("demo", {**TINY, "data_root": data_root})
    run = Run.create(tmp_path_factory.mktemp("runs"), "done", cfg.to_dict())
    assert train(cfg, run, log=lambda m: None)["state"] == "finished"
    return run


def image(mode: str, rng) -> Image.Image:
    rgb = Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8))
    return rgb.convert(mode)


def make_folder(path: Path, layout: dict[str, int]) -> Path:
    """<path>/<class>/<n gray PNGs> for each class in layout."""
    rng = np.random.default_rng(0)
    for cls, n in layout.items():
        (path / cls).mkdir(parents=True)
        for i in range(n):
            image("L", rng).save(path / cls / f"{i}.png")
    return path


# -- bad input through the CLI: one message, exit 2, no run folder ----------------------------------------
BAD = {
    "rho": (["--set", "rho=1.5"], "rho=1.5 is invalid: must lie in [0, 1]"),
    "rho-nan": (["--set", "rho=nan"], "rho=nan is invalid"),
    "delta": (["--set", "delta=-0.1"], "delta=-0.1 is invalid"),
    "delta-inf": (["--set", "delta=inf"], "delta=inf is invalid"),
    "alpha-sum": (["--set", "alpha=0.5"], "alpha+beta+gamma"),
    "gamma": (["--set", "gamma=-1", "--set", "alpha=1", "--set", "beta=1"], "gamma=-1.0 is invalid"),
    "steps": (["--set", "steps=0"], "steps=0 is invalid"),
    "steps-text": (["--set", "steps=ten"], "steps='ten' is not a valid int (a whole number"),
    "batch-float-huge": (["--set", "batch_size=1e40"], "batch_size='1e40' is not a valid int (a whole number; "
                         "above 2^53 write it in digits)"),
    "threads-huge": (["--set", f"threads={2 ** 40}"], f"threads={2 ** 40} is invalid: must be below 2^31"),
    "bool-text": (["--set", "cuda_graphs=maybe"], "cuda_graphs='maybe' is not a valid bool (true or false)"),
    "ckpt": (["--set", "ckpt_every=-5"], "ckpt_every=-5 is invalid"),
    "lr-zero": (["--set", "lr_critic=0"], "lr_critic=0.0 is invalid"),
    "lr-big": (["--set", "lr_generator=5"], "lr_generator=5.0 is invalid"),
    "lr-nan": (["--set", "lr_extractor=nan"], "lr_extractor=nan is invalid"),
    "field": (["--set", "no_such_field=1"], "no_such_field"),
    "preset": (["--preset", "imagenet21k"], "unknown preset 'imagenet21k'"),
    "dataset": (["--set", "dataset=mnist9k"], "dataset='mnist9k' is invalid"),
    "missing-files": (["--set", "dataset=cinic10"], "dataset 'cinic10' is not on this machine: expected its files"),
    "missing-source": (["--set", "source=emnist"], "dataset 'emnist' is not on this machine: expected its files"),
    "no-folder": (["--set", "dataset=folder"], "set folder=<path> for dataset=folder"),
    "folder-absent": (["--set", "dataset=folder", "--set", "folder=nope"], "nope does not exist"),
    "one-class": (["--set", "dataset=folder", "--set", "folder=one"], "has 1 class sub-folder(s) ['a']"),
    "empty-class": (["--set", "dataset=folder", "--set", "folder=empty"], "class 'b' has no readable images"),
    "folder-escape": (["--set", "dataset=folder", "--set", "folder=../outside"], "outside the allowed data root"),
    "run-id-dots": (["--run-id", "../evil"], "invalid run id '../evil'"),
    "run-id-slash": (["--run-id", "a/b"], "invalid run id 'a/b'"),
    "run-id-newline": (["--run-id", "nl\n"], "invalid run id 'nl\\n'"),
    "run-id-empty": (["--run-id", ""], "invalid run id ''"),
    "grayscale-not-folder": (["--set", "grayscale=true"], "grayscale=True is invalid: applies to dataset=folder only"),
    "lenet-head-vgg": (["--set", "backbone=vgg16", "--set", "official_lenet_head=true"],
                       "official_lenet_head=True is invalid: the official code's 1024/128 head is LeNet's"),
    "preset-set": (["--set", "preset=svhn"], "cannot be overridden: choose the preset with --preset NAME"),
    "seed": (["--set", "seed=-5"], "seed=-5 is invalid"),
    "seed-huge": (["--set", f"seed={2 ** 70}"], f"seed={2 ** 70} is invalid"),
    "set-twice": (["--set", "rho=0.5", "--set", "rho=0.6"], "rho is set twice ('0.5' and '0.6'); give it once"),
    "flag-and-set": (["--set", "rho=0.5", "--rho", "0.6"], "rho is set twice"),
    "head-refit": (["--set", "head_refit=sometimes"], "head_refit='sometimes' is invalid"),
    "short-classes": (["--set", "short_classes=some"], "short_classes='some' is invalid"),
    "original-reg": (["--set", "method=original", "--set", "transfer_reg=l2sp"], "transfer_reg='l2sp' is invalid: "
                     "Original trains from scratch: there is no source model to regularise towards; use auto or none"),
    "class-too-small": (["--set", "n_max=600"], "only 400 are available; lower n_max to at most 400 (or leave it "
                        "unset), or set short_classes=all"),
}


def case_args(args: list[str]) -> list[str]:
    """TINY_ARGS without the fields the case sets itself (a field given twice is refused), then the case."""
    own = {a.split("=", 1)[0] for a in args if "=" in a}
    keep = [a for k, v in TINY.items() if k not in own for a in ("--set", f"{k}={v}")]
    return keep + args


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_one_clear_message_and_no_run_folder(case, tmp_path, capsys):
    args, message = BAD[case]
    data_root = tmp_path / "data"
    make_folder(data_root / "one", {"a": 3})
    make_folder(data_root / "empty", {"a": 3, "b": 0})
    make_folder(tmp_path / "outside", {"x": 3, "y": 3})
    runs = tmp_path / "runs"
    rc = cli.main(["train", "--runs-dir", str(runs), "--set", f"data_root={data_root}", *case_args(args)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not runs.exists()  # no run folder, not even a half-made one, and no runs folder made for it
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("where", ["runs-dir-is-a-file", "runs-dir-read-only", "data-root-is-a-file"])
def test_folders_that_cannot_be_written_are_named_before_any_work(where, tmp_path, capsys):
    runs, data_root = tmp_path / "runs", tmp_path / "data"
    if where == "runs-dir-is-a-file":
        runs.write_text("not a folder")
        message = f"cannot write runs into {runs} (FileExistsError"
    elif where == "runs-dir-read-only":
        runs.mkdir()
        os.chmod(runs, 0o500)
        if os.access(runs, os.W_OK):  # root ignores permissions: nothing to check here
            pytest.skip("this user can write into read-only folders")
        message = f"cannot write runs into {runs} (PermissionError"
    else:
        data_root.write_text("not a folder")
        message = f"data_root={str(data_root)!r} is a file; it must be a folder"
    rc = cli.main(["train", "--runs-dir", str(runs), *TINY_ARGS, "--set", f"data_root={data_root}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err, err
    assert not runs.is_dir() or not list(runs.iterdir())


def test_a_damaged_imagenet_file_is_named_before_a_run_folder_exists(tmp_path, monkeypatch, capsys):
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    # a file that holds a pickled object: torch's refusal runs to many lines, the message keeps one
    torch.save({"x": Path("not a tensor")}, hub / "checkpoints" / "resnet50-11ad3fa6.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    folder = make_folder(tmp_path / "imgs", {"a": 2, "b": 2})
    runs = tmp_path / "runs"
    rc = cli.main(["train", "--runs-dir", str(runs), "--set", "backbone=resnet50", "--set", "source=imagenet",
                   "--set", "dataset=folder", "--set", f"folder={folder}", "--set", f"data_root={tmp_path}",
                   "--set", "imbalance=none", "--set", "steps=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "resnet50-11ad3fa6.pth cannot be read" in err and "Delete it and fetch it again" in err, err
    assert err.count("\n") == 1 and not runs.exists()
    (tmp_path / "afile").write_text("")
    assert cli.main(["data", "--download", "svhn", "--data-root", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err
    assert "cannot write 'svhn' into" in err and "NotADirectoryError" in err and "offline" not in err, err


def test_ctrl_c_says_how_to_continue_and_exits_130(tmp_path, monkeypatch, capsys):
    def interrupt(cfg, run, **kw):
        run.set_status(state="interrupted", step=3)
        raise KeyboardInterrupt
    monkeypatch.setattr("dfg.loop.train", interrupt)
    runs = tmp_path / "runs"
    rc = cli.main(["train", "--runs-dir", str(runs), "--run-id", "cc", *TINY_ARGS, "--set", f"data_root={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 130 and "Traceback" not in err
    assert f"interrupted at step 3; continue with `python -m dfg resume cc --runs-dir {runs}`" in err


def test_whole_numbers_are_read_exactly_and_an_empty_data_root_is_refused(tmp_path, monkeypatch):
    from dfg.config import parse_value
    assert parse_value("seed", "12345678901234567") == 12345678901234567  # was rounded through a float
    assert parse_value("seed", str(2 ** 63 - 1)) == 2 ** 63 - 1
    assert make_config("demo", {"seed": str(2 ** 63 - 1)}).seed == 2 ** 63 - 1
    assert parse_value("steps", "1e3") == 1000 and parse_value("steps", " 20 ") == 20
    with pytest.raises(ConfigError, match="not a valid int"):
        parse_value("steps", "2.5")
    with pytest.raises(ConfigError, match="data_root='' is invalid: must name a folder"):
        make_config("demo", {"data_root": ""})


def test_the_command_line_takes_its_folders_from_the_apps_variables(finished, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DFG_RUNS_DIR", str(finished.root))
    monkeypatch.setenv("DFG_DATA_ROOT", str(tmp_path / "elsewhere"))
    assert cli.main(["runs"]) == 0
    assert finished.id in capsys.readouterr().out
    args = cli.build_parser().parse_args(["train"])
    assert args.runs_dir == str(finished.root)
    assert cli.config_from_args(args).data_root == str(tmp_path / "elsewhere")
    args = cli.build_parser().parse_args(["train", "--set", f"data_root={tmp_path}"])
    assert cli.config_from_args(args).data_root == str(tmp_path)  # an explicit value wins


def test_resuming_a_finished_run_changes_nothing(finished, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(finished.path, runs / finished.id)
    run = Run(runs, finished.id)
    before = (run.path / "status.json").read_text(), (run.path / "metrics.jsonl").read_text()
    assert cli.main(["resume", finished.id, "--runs-dir", str(runs)]) == 0
    err = capsys.readouterr().err
    assert f"run {finished.id} already finished at step 5/5: nothing to resume" in err
    assert ((run.path / "status.json").read_text(), (run.path / "metrics.jsonl").read_text()) == before


def stopped_copy(finished: Run, tmp_path) -> Run:
    """A copy of the finished run, recorded as stopped at its last step (a resume has work to do)."""
    shutil.copytree(finished.path, tmp_path / "runs" / finished.id)
    run = Run(tmp_path / "runs", finished.id)
    run.set_status(state="stopped", step=5)
    return run


def test_a_resume_that_fails_before_its_checkpoint_loads_keeps_the_step_on_record(finished, tmp_path,
                                                                                   monkeypatch, capsys):
    run = stopped_copy(finished, tmp_path)

    def interrupted_setup(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr("dfg.loop.setup", interrupted_setup)
    assert cli.main(["resume", finished.id, "--runs-dir", str(run.root)]) == 130
    assert "interrupted at step 5" in capsys.readouterr().err
    assert run.status()["state"] == "interrupted" and run.status()["step"] == 5  # was step 0


def test_a_run_told_to_exit_is_recorded_as_interrupted(finished, tmp_path, monkeypatch):
    """Ray's SIGTERM handler (a second SIGTERM inside a task) raises SystemExit: the run is recorded as
    interrupted at its step, not left 'running' until its heartbeat ages."""
    run = stopped_copy(finished, tmp_path)

    def told_to_exit(*a, **k):
        raise SystemExit(1)
    monkeypatch.setattr("dfg.loop.setup", told_to_exit)
    with pytest.raises(SystemExit):
        train(from_dict(run.config()), run, resume=True, log=lambda m: None)
    s = run.status()
    assert s["state"] == "interrupted" and s["step"] == 5 and "the process was told to exit" in s["error"]


def test_a_damaged_checkpoint_is_refused_before_any_setup_and_the_run_keeps_its_state(finished, tmp_path,
                                                                                        monkeypatch, capsys):
    run = stopped_copy(finished, tmp_path)
    ckpt = run.checkpoint_path
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])

    def no_setup(*a, **k):
        raise AssertionError("setup (data, source model, filter weights) ran before the checkpoint was checked")
    monkeypatch.setattr("dfg.loop.setup", no_setup)
    assert cli.main(["resume", finished.id, "--runs-dir", str(run.root)]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {ckpt} is unreadable" in err and "move it away and `python -m dfg resume` trains" in err
    assert run.status()["state"] == "stopped" and run.status()["step"] == 5 and not run.status().get("error")


def test_a_config_changed_after_the_checkpoint_is_refused_and_bookkeeping_changes_are_not(finished, tmp_path,
                                                                                            monkeypatch, capsys):
    """Hand-editing config.json between a stop and a resume would train the rest of the run with other values
    than its rows and filter weights so far, with nothing on record; the checkpoint holds the config it trained."""
    run = stopped_copy(finished, tmp_path)
    assert from_dict(load_checkpoint(run.checkpoint_path)["state"]["config"]) == from_dict(run.config())
    cfg = run.config()
    (run.path / "config.json").write_text(json.dumps({**cfg, "rho": 0.0, "seed": 3}))

    def no_setup(*a, **k):
        raise AssertionError("setup ran before the config was checked against the checkpoint")
    with monkeypatch.context() as m:
        m.setattr("dfg.loop.setup", no_setup)
        assert cli.main(["resume", finished.id, "--runs-dir", str(run.root)]) == 2
    err = capsys.readouterr().err
    assert "config.json was changed after its checkpoint at step 5" in err and "rho: 0.75 -> 0.0" in err \
        and "seed: 0 -> 3" in err and "Put the old values back" in err, err
    assert run.status()["state"] == "stopped" and run.status()["step"] == 5 and not run.status().get("error")
    # where and how often it runs may change: threads, the data root, the report intervals
    (run.path / "config.json").write_text(json.dumps({**cfg, "threads": 2, "eval_every": 1, "log_every": 1}))
    assert cli.main(["resume", finished.id, "--runs-dir", str(run.root)]) == 0
    assert run.status()["state"] == "finished"


def test_a_stop_during_setup_ends_the_run_before_training_and_it_resumes_from_there(data_root, tmp_path,
                                                                                     monkeypatch):
    cfg = make_config("demo", {**TINY, "data_root": data_root})
    run = Run.create(tmp_path / "runs", "s", cfg.to_dict())
    run.request_stop()  # the app's Stop while the worker prepares (the source is cached here)
    status = train(cfg, run, log=lambda m: None, keep_stop=True)
    assert status["state"] == "stopped" and status["step"] == 0 and not run.stop_requested()
    assert not run.checkpoint_path.exists() and not run.read_metrics()[0]
    assert train(cfg, run, resume=True, log=lambda m: None)["state"] == "finished"
    # while the source pretrains: the request is seen at its next progress report, and pretraining ends there

    def pretraining(cfg, in_channels, device, progress=None, **kw):
        progress(50, cfg.pretrain_steps, 1.0)
        raise AssertionError("pretraining went on after a stop request")
    monkeypatch.setattr("dfg.source.pretrain_source", pretraining)
    run2 = Run.create(tmp_path / "runs", "s2", cfg.to_dict())
    run2.request_stop()
    assert train(cfg, run2, log=lambda m: None, keep_stop=True)["state"] == "stopped"


def test_hand_edited_run_records_do_not_break_the_listing_or_a_resume(finished, tmp_path, capsys):
    runs = tmp_path / "runs"
    for name in ("a", "b"):
        shutil.copytree(finished.path, runs / name)
    b = Run(runs, "b")
    b.set_status(created=None, pid="123", top1="0.9", step="5", state="running")
    assert cli.main(["runs", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 2 and "a " in out and "b " in out, out
    assert b.status()["state"] == "interrupted"  # no live pid: not 'running'
    (runs / "a" / "config.json").write_text("")  # the listing names it instead of promising a resume
    assert cli.main(["runs", "--runs-dir", str(runs)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("a "))
    assert "damaged: " in line and "config.json is not valid JSON" in line and "resume continues" not in line
    (runs / "a" / "config.json").write_text((finished.path / "config.json").read_text())
    rows = (b.path / "metrics.jsonl").read_text().splitlines()
    (b.path / "metrics.jsonl").write_text("\n".join([rows[0], "null", "[1, 2]", *rows[1:]]) + "\n")
    assert len(b.read_metrics()[0]) == len(rows)  # rows that are not objects are skipped
    b.set_status(state="stopped", step=5)
    assert cli.main(["resume", "b", "--runs-dir", str(runs)]) == 0
    assert b.status()["state"] == "finished"
    a = Run(runs, "a")
    a.set_status(state="stopped")
    (a.path / "metrics.jsonl").unlink()
    assert cli.main(["resume", "a", "--runs-dir", str(runs)]) == 0
    assert a.status()["state"] == "finished" and [r["kind"] for r in a.read_metrics()[0]][-1] == "eval"


def test_a_run_folder_that_cannot_be_written_is_named_before_a_resume(finished, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(finished.path, runs / finished.id)
    run = Run(runs, finished.id)
    run.set_status(state="stopped", step=3)
    before = (run.path / "status.json").read_text()
    monkeypatch.setattr("dfg.jobs.writable_problem", lambda folder: "OSError: Read-only file system")
    assert cli.main(["resume", finished.id, "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: cannot write into the run folder {run.path} (OSError: Read-only file system); copy "
                   "the run to a runs folder you can write to and resume it there (--runs-dir)\n")
    assert (run.path / "status.json").read_text() == before


def test_stop_pressed_before_the_worker_is_up_is_honoured(data_root, tmp_path, monkeypatch):
    """The app offers Stop while a run is 'created'. `jobs.launch` clears old requests before the worker
    starts, and the worker keeps any made since: the run stops before its first step instead of training on."""
    from dfg import jobs
    cfg = make_config("demo", {**TINY, "data_root": data_root, "steps": 20, "ckpt_every": 20})
    run = Run.create(tmp_path, "early", cfg.to_dict())
    run.request_stop()  # left over from before: must not stop the new worker

    class NoProcess:
        pid = 0

        def poll(self):
            return 0
    with monkeypatch.context() as m:  # only for the launch: ctypes (tune_allocator) starts a real process
        m.setattr(jobs.subprocess, "Popen", lambda *a, **k: NoProcess())
        jobs.launch(run)
    assert not run.stop_requested()
    run.request_stop()  # the user's Stop, while the worker is still starting
    assert cli.main(["worker", "early", "--runs-dir", str(tmp_path)]) == 0
    assert run.status()["state"] == "stopped" and run.status()["step"] == 0 and not run.checkpoint_path.exists()


def test_eval_checks_the_run_record_and_the_device(finished, capsys):
    assert cli.main(["eval", finished.id, "--runs-dir", str(finished.root), "--device", "banana"]) == 2
    assert "device='banana' is not a device: use auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    edited = finished.root / "edited"
    shutil.copytree(finished.path, edited)
    cfg = json.loads((edited / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps({**cfg, "rho": 7.0}))
    assert cli.main(["eval", "edited", "--runs-dir", str(finished.root)]) == 2
    assert "rho=7.0 is invalid: must lie in [0, 1]" in capsys.readouterr().err


def test_the_command_line_hides_worker_refuses_abbreviations_and_keeps_data_root_absolute(tmp_path, capsys,
                                                                                          monkeypatch):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "SUPPRESS" not in out and "worker" not in out and "sweep" in out
    for verb in ("train", "pretrain"):  # the per-field flags are hidden, but their existence is stated
        with pytest.raises(SystemExit):
            cli.main([verb, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "--key-with-dashes VALUE" in out and "--rho" not in out
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--rh", "0.9"])  # would silently have set rho
    assert e.value.code == 2 and "unrecognized arguments: --rh" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    args = cli.build_parser().parse_args(["train", "--set", "data_root=data"])
    assert cli.config_from_args(args).data_root == str(tmp_path / "data")
    (tmp_path / "afile").write_text("x")
    assert cli.main(["runs", "--runs-dir", str(tmp_path / "afile")]) == 2
    assert "is a file, not a folder of runs" in capsys.readouterr().err


def test_a_test_set_without_some_classes_says_so():
    data = build_data("digits", backbone="lenet", limit_test=3)
    assert any("7 of 10 classes have no test images" in w and "use limit_test >= 10" in w for w in data.warnings)
    assert not any("no test images" in w for w in build_data("digits", backbone="lenet", limit_test=10).warnings)


def test_the_apps_submit_checks_before_making_a_folder(tmp_path):
    cfg = make_config("demo", {**TINY, "data_root": str(tmp_path), "dataset": "cinic10"})
    with pytest.raises(DataError, match="cinic10"):
        submit(cfg, tmp_path / "runs", "app-run")
    assert not (tmp_path / "runs" / "app-run").exists()


def test_data_that_fails_inside_train_marks_the_run_failed(data_root, tmp_path):
    """The fallback when a folder was made without preflight (e.g. files deleted in between)."""
    cfg = make_config("demo", {**TINY, "data_root": str(tmp_path), "dataset": "cinic10"})
    run = Run.create(tmp_path / "runs", "late", cfg.to_dict())
    with pytest.raises(DataError):
        train(cfg, run, log=lambda m: None)
    s = run.status()
    assert s["state"] == "failed" and "DataError: dataset 'cinic10' is not on this machine" in s["error"]


def test_user_folder_with_mixed_modes_and_broken_files(data_root, tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "data"
    cat, dog = root / "pets" / "cat", root / "pets" / "dog"
    cat.mkdir(parents=True)
    dog.mkdir()
    for i in range(3):
        image("L", rng).save(cat / f"gray{i}.png")
    image("RGBA", rng).save(cat / "alpha.png")
    image("P", rng).save(cat / "palette.gif")
    for i in range(2):
        image("CMYK", rng).save(dog / f"cmyk{i}.jpg")
    image("RGB", rng).save(dog / "rgb.jpg")
    image("RGB", rng).save(dog / "cut.png")
    (dog / "cut.png").write_bytes((dog / "cut.png").read_bytes()[:300])  # truncated
    (dog / "notes.txt").write_text("not an image")
    (dog / "fake.png").write_text("not an image either")
    cfg = make_config("demo", {**TINY, "data_root": str(root), "dataset": "folder", "folder": "pets",
                               "imbalance": "none", "method": "original"})
    data = preflight(cfg)
    assert data.class_names == ("cat", "dog") and len(data.train) + len(data.test) == 8
    assert data.train[0][0].shape == (1, 32, 32)
    assert "skipped 3 unreadable or non-image files: dog/cut.png, dog/fake.png, dog/notes.txt" in data.warnings


# -- checkpoints: never executed, never silently wrong ----------------------------------------------------
class Payload:
    """Pickles to `os.system('touch <marker>')`: code that would run if the file were unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(finished, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": 2, "backbone": "lenet", "method": "dfg", "step": 5, "state": {"x": Payload(marker)}}, evil)
    with pytest.raises(CheckpointError, match="not a plain-tensor checkpoint"):
        load_checkpoint(evil)
    assert not marker.exists()
    # ... also when it sits in a run folder and the run is resumed or evaluated
    run = Run.create(tmp_path / "runs", "victim", finished.config())
    run.checkpoint_path.write_bytes(evil.read_bytes())
    assert cli.main(["resume", run.id, "--runs-dir", str(run.root)]) == 2
    assert cli.main(["eval", run.id, "--runs-dir", str(run.root)]) == 2
    assert not marker.exists()
    assert "not a plain-tensor checkpoint" in capsys.readouterr().err
    assert run.status()["state"] == "created"  # refused before training: the run's record is unchanged
    # the payload is live: a plain unpickler would have run it
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_truncated_edited_foreign_and_misshapen_checkpoints_are_refused(finished, tmp_path):
    good = finished.checkpoint_path.read_bytes()
    cases = {"truncated": good[: len(good) // 2], "edited": bytearray(good)}
    cases["edited"][len(good) // 2] ^= 0xFF  # one flipped bit inside a tensor: only the digest sees it
    for name, data in cases.items():
        (tmp_path / name).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path / "truncated")
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        load_checkpoint(tmp_path / "edited")
    ckpt = load_checkpoint(finished.checkpoint_path)
    save_checkpoint(tmp_path / "vgg.pt", ckpt["state"], backbone="vgg16", method="dfg", step=5)
    with pytest.raises(CheckpointError, match="is for backbone 'vgg16', but this run uses 'lenet'"):
        load_checkpoint(tmp_path / "vgg.pt", backbone="lenet", method="dfg")
    state = ckpt["state"]
    state["method"]["nets"]["classifier"] = {k: torch.zeros(3) for k in state["method"]["nets"]["classifier"]}
    save_checkpoint(tmp_path / "shape.pt", state, backbone="lenet", method="dfg", step=5)
    _, method = setup(make_config("demo", {**TINY, **{"data_root": finished.config()["data_root"]}}),
                      torch.device("cpu"), log=lambda m: None)
    with pytest.raises(CheckpointError, match="does not fit this run's networks"):
        load_method_state(method, load_checkpoint(tmp_path / "shape.pt"), tmp_path / "shape.pt")


def test_resuming_onto_a_foreign_checkpoint_fails_clearly(finished, tmp_path, capsys):
    run = Run.create(tmp_path / "runs", "mixed", finished.config())
    save_checkpoint(run.checkpoint_path, load_checkpoint(finished.checkpoint_path)["state"], backbone="vgg16",
                    method="dfg", step=5)
    assert cli.main(["resume", run.id, "--runs-dir", str(run.root)]) == 2
    assert "is for backbone 'vgg16', but this run uses 'lenet'" in capsys.readouterr().err
    assert run.status()["state"] == "created" and not run.status().get("error")


# -- config.json and filter weights are data --------------------------------------------------------------
@pytest.mark.parametrize("edit, message", [
    (lambda d: {**d, "evil": "__import__('os')"}, "unknown config fields ['evil']"),
    (lambda d: {**d, "steps": "40"}, "config field steps='40' has the wrong type: expected int"),
    (lambda d: {**d, "rho": [0.5]}, "config field rho=[0.5] has the wrong type: expected float"),
    (lambda d: {**d, "majority": [1, "x"]}, "config field majority=[1, 'x'] has the wrong type"),
    (lambda d: "{not json", "is not valid JSON"),
    (lambda d: [1, 2], "must hold a JSON object"),
])
def test_a_tampered_config_json_is_refused(edit, message, finished, tmp_path, capsys):
    run = Run.create(tmp_path / "runs", "cfg", finished.config())
    new = edit(run.config())
    (run.path / "config.json").write_text(new if isinstance(new, str) else json.dumps(new))
    assert cli.main(["resume", run.id, "--runs-dir", str(run.root)]) == 2
    assert message in capsys.readouterr().err
    assert cli.main(["worker", run.id, "--runs-dir", str(run.root)]) == 1  # the app's path: recorded
    assert run.status()["state"] == "failed" and message in run.status()["error"]


def test_config_round_trips_through_json():
    cfg = make_config("demo", {"majority": "1,2", "rho": "0.5"})
    assert from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError):
        from_dict({"steps": True})  # a bool is not an int here


def test_filter_weights_with_pickled_objects_are_refused(tmp_path):
    run = Run.create(tmp_path, "fw", {"seed": 0})
    marker = tmp_path / "pwned"
    np.savez(run.path / "filter_weights" / "w_00000003.npz", w_star=np.array([Payload(marker)], dtype=object))
    with pytest.raises(RunError, match="damaged or not plain arrays"):
        run.load_filter_weights(3)
    with pytest.raises(RunError, match="no filter weights for step 4"):
        run.load_filter_weights(4)
    assert not marker.exists()


# -- names and paths --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "a..b", "/abs", ".hidden", "", "x" * 200, "a\\b", "a\nb",
                                 "ok\n"])
def test_run_ids_cannot_name_a_path(bad, tmp_path):
    with pytest.raises(RunError, match="invalid run id"):
        Run(tmp_path, bad)
    with pytest.raises(RunError):
        check_run_id(bad)


def test_list_runs_skips_folders_that_are_not_runs(tmp_path):
    Run.create(tmp_path, "ok", {"seed": 0})
    (tmp_path / ".creating-x-1").mkdir()
    (tmp_path / "no-config").mkdir()
    assert [r.id for r in list_runs(tmp_path)] == ["ok"]


def test_folders_cannot_escape_the_data_root(tmp_path):
    root = tmp_path / "root"
    outside = make_folder(tmp_path / "elsewhere", {"a": 3, "b": 3})
    make_folder(root / "inside", {"a": 3, "b": 3})
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "inside" / "a" / "up").symlink_to(outside, target_is_directory=True)  # not followed
    ok = build_data("folder", backbone="lenet", root=str(root), folder="inside", imbalance="none")
    assert ok.class_names == ("a", "b") and len(ok.train) + len(ok.test) == 6
    for folder in ("../elsewhere", "link", str(outside), "inside/../../elsewhere", "link/a/.."):
        with pytest.raises(DataError, match="outside the allowed data root"):
            build_data("folder", backbone="lenet", root=str(root), folder=folder, imbalance="none")


def test_a_file_symlink_cannot_pull_in_an_image_from_outside_the_data_root(tmp_path):
    root = tmp_path / "root"
    make_folder(root / "inside", {"a": 3, "b": 3})
    secret = make_folder(tmp_path / "elsewhere", {"s": 1}) / "s" / "0.png"
    (root / "inside" / "a" / "leak.png").symlink_to(secret)
    data = build_data("folder", backbone="lenet", root=str(root), folder="inside", imbalance="none")
    assert len(data.train) + len(data.test) == 6


def test_the_app_listens_on_localhost_only():
    path = REPO / ".streamlit" / "config.toml"
    if not path.exists():
        pytest.skip(".streamlit/config.toml is missing: streamlit would listen on all interfaces")
    assert tomllib.loads(path.read_text())["server"]["address"] == "127.0.0.1"


# -- concurrency ------------------------------------------------------------------------------------------
def _write_rows(root: str, run_id: str, n: int) -> None:
    run = Run(root, run_id)
    for step in range(1, n + 1):
        big = step % 25 == 0  # some rows far above a pipe buffer (like a 257-class confusion matrix)
        run.append_metrics([{"kind": "train", "step": step, "run": run_id, "pad": "x" * (300_000 if big else step)}])


def test_two_runs_written_at_once_read_by_two_readers_each(tmp_path):
    n = 400
    runs = [Run.create(tmp_path, f"w{i}", {"seed": i}) for i in range(2)]
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_write_rows, args=(str(tmp_path), r.id, n)) for r in runs]
    for w in writers:
        w.start()
    seen = {(r.id, k): [] for r in runs for k in (0, 1)}
    offsets = dict.fromkeys(seen, 0)

    def read_all():
        for (rid, k), rows in seen.items():
            new, offsets[rid, k] = Run(tmp_path, rid).read_metrics(offsets[rid, k])
            rows += new
    while any(w.is_alive() for w in writers):
        read_all()
    read_all()
    assert [w.exitcode for w in writers] == [0, 0]
    for r in runs:
        assert seen[r.id, 0] == seen[r.id, 1]  # two readers, same data
        rows = seen[r.id, 0]
        assert [x["step"] for x in rows] == list(range(1, n + 1))  # none lost, repeated or reordered
        assert {x["run"] for x in rows} == {r.id}  # never a row of the other run
        raw = (r.path / "metrics.jsonl").read_bytes()
        assert raw.count(b"\n") == n and all(json.loads(line) for line in raw.splitlines())


@pytest.mark.parametrize("edit, field", [({"limit_test": 50}, "limit_test: 100 -> 50"),
                                         ({"dataset": "digits"}, "dataset: 'mnist5k' -> 'digits'")])
def test_eval_of_a_run_whose_config_was_edited_after_its_checkpoint_is_refused(finished, tmp_path, capsys, edit,
                                                                                field):
    """Another test subset or dataset would be evaluated under the run's name with weights trained for the old
    one: refused with the field named, as a resume is; where and how it reports may change (threads)."""
    copy = tmp_path / "runs"
    shutil.copytree(finished.path, copy / "r")
    cfg = json.loads((copy / "r" / "config.json").read_text())
    (copy / "r" / "config.json").write_text(json.dumps({**cfg, **edit}))
    assert cli.main(["eval", "r", "--runs-dir", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "config.json was changed after its checkpoint" in err and field in err and "Put the old values back" in err
    (copy / "r" / "config.json").write_text(json.dumps({**cfg, "threads": 2}))
    assert cli.main(["eval", "r", "--runs-dir", str(copy)]) == 0


def test_evaluating_a_restored_run_leaves_its_nets_in_eval_mode(finished):
    """run_eval puts each net back as it found it: a restored run's nets stay in eval mode (BN on running
    statistics) for whatever inspects them next."""
    from dfg.loop import run_eval
    from dfg.restored import restore
    cfg, data, method, _ = restore(finished)
    assert not any(net.training for net in method.nets.values())
    first = run_eval(method, data, torch.device("cpu"))
    assert not any(net.training for net in method.nets.values())
    assert run_eval(method, data, torch.device("cpu")) == first


def test_eval_needs_the_target_data_and_the_checkpoint_only(finished, tmp_path, capsys):
    """A run folder moved to a machine without its source model: eval gives the run's own last test metrics
    without pretraining a source (or needing the source's data) and writes nothing into the data root."""
    moved = tmp_path / "runs"
    shutil.copytree(finished.path, moved / "moved")
    cfg = json.loads((moved / "moved" / "config.json").read_text())
    fresh = tmp_path / "fresh-data"  # the demo's target data needs no files; its source would be cached here
    (moved / "moved" / "config.json").write_text(json.dumps({**cfg, "data_root": str(fresh)}))
    assert cli.main(["eval", "moved", "--runs-dir", str(moved)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["top1"] == finished.read_json("final.json")["last"]["top1"]
    assert "pretrain" not in err and "re-fit" not in err
    assert not (fresh / "sources").exists()
