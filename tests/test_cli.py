"""The command line as a user meets it: values that would fail mid-run (or train wrongly) are refused before a
run folder exists; a flag given twice is an error; runs started at once get ids of their own; SIGTERM ends a
`train` with 143 and the resume command; `resume --set` changes only where and how often a run reports; the
progress line fits the terminal; a config.json from a newer version is named as such; a failed download
leaves no empty folder; a GPU run's eval on a CPU says to add --device cpu."""
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import pretrained_data_root

from dfg import cli, jobs
from dfg.config import ConfigError, from_dict, make_config
from dfg.runstore import Run, RunError

REPO = Path(__file__).resolve().parent.parent
TINY = dict(steps=5, ckpt_every=5, log_every=5, eval_every=5, pretrain_steps=50, head_refit_steps=10,
            limit_test=100, batch_size=16, fw_per_class=3, threads=1, source_per_class=100)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return pretrained_data_root(tmp_path_factory, TINY)


@pytest.mark.parametrize("overrides, message", [
    ({"optimizer_ec": "sgd", "sgd_momentum": "-1"}, "sgd_momentum=-1.0 is invalid: must lie in [0, 1)"),
    ({"sgd_momentum": "5"}, "sgd_momentum=5.0 is invalid"),
    ({"reg_alpha": "-1"}, "reg_alpha=-1.0 is invalid: must be >= 0"),
    ({"reg_beta": "-5"}, "reg_beta=-5.0 is invalid"),
    ({"source": "folder"}, "your own images can be the target (dataset=folder"),
    ({"pretrain_steps": "0"}, "0 steps would leave E_S and C_S at their random initialisation"),
    ({"adam_beta1": "1"}, "adam_beta1=1.0 is invalid"),
    ({"majority": "2 9 4", "num_majority": "2"}, "num_majority=2 contradicts majority=(2, 9, 4)"),
    ({"majority": "2 9", "imbalance": "none"}, "applies to imbalance=step only"),
    ({"majority": "a"}, 'class indices, e.g. "2 9"'),
    ({"pretrain-steps": "5"}, "did you mean pretrain_steps?"),
])
def test_values_that_would_fail_or_mislead_mid_run_are_refused_naming_the_field(overrides, message):
    with pytest.raises(ConfigError) as e:
        make_config("demo", overrides)
    assert message in str(e.value)


def test_given_majority_classes_set_their_count_and_zero_pretraining_is_fine_for_original():
    assert make_config("demo", {"majority": "2 9 4"}).num_majority == 3
    assert make_config("demo", {"method": "original", "pretrain_steps": "0"}).pretrain_steps == 0


def test_bad_values_leave_no_run_folder(tmp_path, capsys):
    rc = cli.main(["train", "--runs-dir", str(tmp_path / "runs"), "--set", "optimizer_ec=sgd",
                   "--set", "sgd_momentum=-1", "--set", "steps=1"])
    assert rc == 2 and "sgd_momentum" in capsys.readouterr().err and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv", [["--steps", "1", "--steps", "2"], ["--preset", "svhn", "--preset", "demo"],
                                  ["--run-id", "a", "--run-id", "b"]])
def test_a_flag_given_twice_is_refused(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--runs-dir", str(tmp_path / "runs"), *argv])
    assert e.value.code == 2 and f"{argv[0]} is given twice" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_runs_started_in_one_second_get_ids_of_their_own(data_root, tmp_path, monkeypatch):
    """Before, the id was <time>-<preset>-<method>-s<seed> alone: two of three parallel launches failed with
    'already exists ... resume it', naming another user's run."""
    cfg = make_config("demo", {**TINY, "data_root": data_root})
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20260101-000000")
    first, _ = jobs.create_checked(cfg, tmp_path)
    from dfg import preflight as pf
    real = pf.preflight

    def another_process_takes_the_id(c):  # between our check and our create
        Run.create(tmp_path, "20260101-000000-demo-dfg-s0-2", c.to_dict())
        return real(c)
    monkeypatch.setattr(pf, "preflight", another_process_takes_the_id)
    second, _ = jobs.create_checked(cfg, tmp_path)
    assert (first.id, second.id) == ("20260101-000000-demo-dfg-s0", "20260101-000000-demo-dfg-s0-3")
    with pytest.raises(RunError, match="already exists"):  # a chosen id is never changed
        jobs.create_checked(cfg, tmp_path, first.id)


def test_the_sweeps_folder_name_is_not_a_run_id(data_root, tmp_path):
    cfg = make_config("demo", {**TINY, "data_root": data_root})
    with pytest.raises(RunError, match="sweeps/ folder"):
        jobs.create_checked(cfg, tmp_path, "sweeps")
    (tmp_path / "odd").mkdir()
    with pytest.raises(RunError, match="not a run"):
        jobs.create_checked(cfg, tmp_path, "odd")


def test_sigterm_ends_train_with_143_and_says_how_to_resume(data_root, tmp_path):
    """A scheduler that pre-empts with SIGTERM reads 0 as success and does not requeue: before, a stopped
    `train` exited 0 with no resume command."""
    args = [a for k, v in {**TINY, "steps": 2000, "ckpt_every": 1000, "log_every": 1}.items()
            for a in ("--set", f"{k}={v}")]
    proc = subprocess.Popen([sys.executable, "-m", "dfg", "train", "--runs-dir", str(tmp_path), "--run-id", "t",
                             "--set", f"data_root={data_root}", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    run, t0 = Run(tmp_path, "t"), time.time()
    while run.raw_status().get("step", 0) < 3:
        assert proc.poll() is None and time.time() - t0 < 120, proc.communicate()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert json.loads(out)["state"] == "stopped" and run.status()["state"] == "stopped"
    assert f"stopped by SIGTERM at step {run.status()['step']}" in err
    assert f"python -m dfg resume t --runs-dir {tmp_path}" in err
    assert "\n" in err[err.rindex("GP="):err.index("stopped by SIGTERM")]  # the bar's line was ended first


def test_resume_set_changes_reporting_fields_only(data_root, tmp_path, capsys):
    cfg = make_config("demo", {**TINY, "data_root": data_root})
    run = Run.create(tmp_path, "r", cfg.to_dict())
    run.set_status(state="stopped")
    before = run.config()
    rc = cli.main(["resume", "r", "--runs-dir", str(tmp_path), "--set", "rho=0.1"])
    assert rc == 2 and "rho cannot change on resume" in capsys.readouterr().err
    assert Run(tmp_path, "r").config() == before
    rc = cli.main(["resume", "r", "--runs-dir", str(tmp_path), "--set", "threads=2", "--set", "log_every=1"])
    assert rc == 0, capsys.readouterr().err
    after = Run(tmp_path, "r").config()
    assert (after["threads"], after["log_every"]) == (2, 1)
    assert {k: v for k, v in after.items() if k not in ("threads", "log_every")} == \
        {k: v for k, v in before.items() if k not in ("threads", "log_every")}
    assert Run(tmp_path, "r").status()["state"] == "finished"


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_the_progress_line_fits_the_terminal_and_blanks_a_longer_one(monkeypatch):
    monkeypatch.setattr(shutil, "get_terminal_size", lambda *a: os.terminal_size((70, 20)))
    stream = Tty()
    bar = cli.ProgressBar(stream)
    bar(1, 10, 2.0, {"L_D": -1.0, "L_G": 2.0, "L_E": 0.5, "L_rC": 0.5, "L_C": 1.0, "GP": 0.1})
    bar(2, 10, 2.0, {"L_D": -1.0})
    lines = stream.getvalue().split("\r")[1:]
    assert len(lines[0]) == 69 and len(lines[1]) == 69 and lines[1].rstrip().endswith("L_D=-1.000")
    bar.close()
    assert stream.getvalue().endswith("\n")
    plain = io.StringIO()  # a log file: the whole line
    cli.ProgressBar(plain)(1, 10, 2.0, {"L_D": -1.0, "L_G": 2.0, "L_E": 0.5, "L_rC": 0.5, "L_C": 1.0, "GP": 0.1})
    assert plain.getvalue().rstrip().endswith("GP=0.100")


def test_a_config_from_a_newer_version_is_named_as_such(tiny_dfg_run, tmp_path, capsys):
    shutil.copytree(tiny_dfg_run.run.path, tmp_path / "future", ignore=shutil.ignore_patterns("checkpoint*"))
    cfg = json.loads((tmp_path / "future" / "config.json").read_text())
    (tmp_path / "future" / "config.json").write_text(json.dumps({**cfg, "new_knob": 1}))
    with pytest.raises(ConfigError, match="newer version"):
        from_dict(Run(tmp_path, "future").config())
    assert cli.main(["runs", "--runs-dir", str(tmp_path)]) == 0
    assert "damaged: unknown config fields ['new_knob']" in capsys.readouterr().out


def test_a_failed_download_leaves_no_empty_folder(tmp_path, monkeypatch):
    from dfg.data import DataError, download

    def offline(name, root):
        (root / name / "raw").mkdir(parents=True)
        raise OSError("Name or service not known")
    monkeypatch.setattr(download, "_download", offline)
    (tmp_path / "mine").mkdir()
    with pytest.raises(DataError, match="offline"):
        download.download_dataset("svhn", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_a_cuda_index_beyond_the_machine_is_refused(monkeypatch):
    import torch

    from dfg.loop import resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match="1 CUDA device"):
        resolve_device("cuda:3")


def test_eval_of_a_gpu_run_on_a_cpu_says_to_add_device_cpu(tiny_dfg_run, tmp_path, capsys, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    shutil.copytree(tiny_dfg_run.run.path, tmp_path / "g")
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())
    (tmp_path / "g" / "config.json").write_text(json.dumps({**cfg, "device": "cuda"}))
    assert cli.main(["eval", "g", "--runs-dir", str(tmp_path)]) == 2
    assert "evaluate here with --device cpu" in capsys.readouterr().err


def test_a_value_the_method_does_not_read_is_noted(capsys):
    """--set rho=0.2 for Original, difa_level for DFG, sgd_momentum under Adam: accepted before without a word."""
    from dfg.validation import unused_fields
    args = cli.build_parser().parse_args(["train", "--set", "method=original", "--set", "rho=0.2", "--n-c1", "7",
                                          "--set", "steps=30", "--set", "sgd_momentum=0.5"])
    cli.config_from_args(args)
    err = capsys.readouterr().err
    assert "note: rho, n_c1 are read by the GAN methods (DFG, DIFA+cMWGAN) only" in err
    assert "note: sgd_momentum is read by E and C's SGD (optimizer_ec=sgd) only" in err and "steps" not in err
    assert unused_fields(make_config("demo", {"method": "difa_cmwgan"}), ["rho", "n_c1", "gp_lambda"]) == [
        "rho is read by DFG's filter-weight attention only: this run (method=difa_cmwgan, optimizer_ec=adam) "
        "ignores it"]
    assert unused_fields(make_config("demo"), ["rho", "n_c1", "delta", "n_w"]) == []


def test_majority_sets_apply_to_step_imbalance_only_and_the_form_derives_their_count():
    """A review of this pass's changes: a sweep over imbalance=longtail with --majority-combos was refused (its
    cells got majority sets), and the Train form (which always sends a count) refused three typed classes."""
    from dfg import views
    from dfg.grid import _majority_sets
    assert _majority_sets("demo", {"imbalance": "longtail"}, "2") == [None]
    assert len(_majority_sets("demo", {}, "2")) == 2
    cfg, field, message = views.build_config("demo", {"method": "dfg", "majority": "1,4,8", "num_majority": 2})
    assert (field, message) == ("", "") and cfg.majority == (1, 4, 8) and cfg.num_majority == 3


def test_resume_set_refuses_a_device_this_machine_lacks_before_writing(data_root, tmp_path, capsys):
    cfg = make_config("demo", {**TINY, "data_root": data_root})
    run = Run.create(tmp_path, "r", cfg.to_dict())
    run.set_status(state="stopped")
    before = (run.path / "config.json").read_bytes()
    assert cli.main(["resume", "r", "--runs-dir", str(tmp_path), "--set", "device=cuda:3"]) == 2
    assert "CUDA" in capsys.readouterr().err and (run.path / "config.json").read_bytes() == before


def test_a_sigterm_before_the_first_checkpoint_says_resume_starts_over(tmp_path, capsys, monkeypatch):
    cfg = make_config("demo", {**TINY, "data_root": str(tmp_path)})
    run = Run.create(tmp_path, "r", cfg.to_dict())

    def stopped_in_setup(cfg, run, **kw):
        jobs._SIGTERMED.add(str(run.path))
        return run.set_status(state="stopped", step=0)
    monkeypatch.setattr("dfg.loop.train", stopped_in_setup)
    assert cli._train_here(cfg, run, tmp_path) == 143
    assert "from the start (no checkpoint yet)" in capsys.readouterr().err


def test_a_number_stored_as_int_or_float_is_one_setting():
    """ratio 10 (a preset) and 10.0 (the app's form) split Fig. 6 and the results tables into two settings."""
    from dfg.tables import varied_keys
    base = make_config("svhn").to_dict()
    assert base["ratio"] == 10 and varied_keys([base, {**base, "ratio": 10.0}]) == []
    assert varied_keys([base, {**base, "ratio": 10.5}]) == ["ratio"]


def test_a_batch_larger_than_the_training_set_is_warned_about(data_root, tmp_path):
    """The warning reaches data.json (the Results page) and the log; before, batch_size=100000 was accepted
    without a word and held 7.5 GB at step 0."""
    from dfg.loop import batch_warnings, load_data, train
    cfg = make_config("demo", {**TINY, "data_root": data_root})
    data = load_data(cfg)
    assert batch_warnings(cfg, data) == []
    big = make_config("demo", {**TINY, "data_root": data_root, "batch_size": str(len(data.train) + 1), "steps": "1"})
    run = Run.create(tmp_path, "big", big.to_dict())
    logged = []
    assert train(big, run, log=logged.append)["state"] == "finished"
    expected = f"batch_size={len(data.train) + 1} is larger than the training set ({len(data.train)} images)"
    assert any(w.startswith(expected) for w in run.read_record("data.json")["warnings"])
    assert any(m.startswith("warning: " + expected) for m in logged)
