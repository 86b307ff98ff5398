"""Sweeps: grid expansion and run ids, local and Ray execution with resume, results tables against the
runs' own metrics, the paper's numbers, and method defaults in make_config."""
import json
import csv
import itertools
import statistics
import subprocess
import sys

import pytest

from dfg.cli import main
from dfg.config import ConfigError, make_config
from dfg.data import majority_combinations
from dfg.executors import cpu_cores
from dfg.paper import TABLE2, figure6_top1, paper_top1
from dfg.runstore import Run, check_run_id
from dfg.grid import expand_grid, parse_seeds, parse_sets, varied
from dfg.sweep import _changed_fixed, list_sweeps, load_sweep, run_sweep
from dfg.tables import rho_curve, summarise, summary_latex, summary_markdown

TINY = ["steps=6", "pretrain_steps=20", "head_refit_steps=5", "log_every=3", "eval_every=6", "ckpt_every=6",
        "limit_test=200"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    return {"runs": root / "runs", "sets": TINY + [f"data_root={root / 'data'}"]}


def _final_top1(runs_dir, run_ids):
    return [100 * Run(runs_dir, i).read_json("final.json")["last"]["top1"] for i in run_ids]


def _check_table(runs_dir, name, cells):
    """results.csv's mean/std per method equal statistics.mean/stdev of the runs' final top-1."""
    with open(runs_dir / "sweeps" / name / "results.csv") as f:
        table = {r["method"]: r for r in csv.DictReader(f)}
    assert set(table) == {"original", "dfg"}
    for method, row in table.items():
        vals = _final_top1(runs_dir, [c["run_id"] for c in cells if c["method"] == method])
        assert int(row["n"]) == len(vals) == 2
        assert float(row["top1_mean"]) == pytest.approx(statistics.mean(vals))
        assert float(row["top1_std"]) == pytest.approx(statistics.stdev(vals))


def test_local_sweep_runs_tabulates_and_resumes(dirs, capsys):
    runs = dirs["runs"]
    argv = ["sweep", "--presets", "demo", "--methods", "original,dfg", "--seeds", "2", "--parallel", "2",
            "--runs-dir", str(runs), "--name", "t"] + [a for s in dirs["sets"] for a in ("--set", s)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count(" finished  top1 ") == 4 and "| Dataset | Method |" in out
    sweep = load_sweep(runs, "t")
    cells = sweep["grid"]["cells"]
    assert len(cells) == 4 and all(r["state"] == "finished" for r in sweep["runs"])
    _check_table(runs, "t", cells)
    assert {Run(runs, c["run_id"]).config()["threads"] for c in cells} == {max(1, cpu_cores() // 2)}
    md = (runs / "sweeps" / "t" / "results.md").read_text()
    assert "Paper Table 2" in md and "Minority recall" in md
    with open(runs / "sweeps" / "t" / "per_run.csv") as f:
        per_run = list(csv.DictReader(f))
    assert sorted(r["run_id"] for r in per_run) == sorted(c["run_id"] for c in cells)
    assert list_sweeps(runs)[0]["name"] == "t" and list_sweeps(runs)[0]["finished"] == 4

    # re-launch: nothing runs, no run folder is touched
    files = [runs / c["run_id"] / n for c in cells for n in ("metrics.jsonl", "status.json", "checkpoint.pt")]
    before = [p.stat().st_mtime_ns for p in files]
    again = run_sweep(runs, ["demo"], ["original", "dfg"], [0, 1], name="t", sets=dirs["sets"], parallel=2,
                      log=lambda m: None)
    assert (again["ran"], again["skipped"]) == (0, 4)
    assert [p.stat().st_mtime_ns for p in files] == before

    # a failed run is re-run (resumed from its checkpoint); the finished ones stay skipped
    failed = Run(runs, cells[0]["run_id"])
    failed.set_status(state="failed", error="simulated crash")
    third = run_sweep(runs, ["demo"], ["original", "dfg"], [0, 1], name="t", sets=dirs["sets"], parallel=2,
                      log=lambda m: None)
    assert (third["ran"], third["skipped"], third["finished"]) == (1, 3, 1)
    assert failed.status()["state"] == "finished"
    assert [p.stat().st_mtime_ns for p in files[3:]] == before[3:]

    # another fixed --set value is another experiment: refused before anything runs, the grid kept
    grid = (runs / "sweeps" / "t" / "grid.json").read_text()
    other = [v for v in dirs["sets"] if not v.startswith("steps=")] + ["steps=7"]
    with pytest.raises(ConfigError, match=r"sweep 't' exists with other fixed --set values \(steps: \d+ -> 7\).*"
                                          r"another --name, or add --replace"):
        run_sweep(runs, ["demo"], ["original"], [0], name="t", sets=other, log=lambda m: None)
    with pytest.raises(ConfigError, match=r"\(rho: \(default\) -> 0.5\)"):
        run_sweep(runs, ["demo"], ["original"], [0], name="t", sets=dirs["sets"] + ["rho=0.5"], log=lambda m: None)
    assert (runs / "sweeps" / "t" / "grid.json").read_text() == grid
    # fewer (or more) methods and seeds, more values on an axis, bookkeeping keys: the same experiment
    fewer = run_sweep(runs, ["demo"], ["original"], [0], name="t", sets=dirs["sets"], log=lambda m: None)
    assert fewer["cells"] == 1 and fewer["ran"] == 0
    # a finished cell whose stored config no longer matches the grid (a default changed in the code) is named
    run = Run(runs, fewer and load_sweep(runs, "t")["grid"]["cells"][0]["run_id"])
    stored = json.loads((run.path / "config.json").read_text())
    (run.path / "config.json").write_text(json.dumps({**stored, "lr_critic": stored["lr_critic"] * 2}))
    notes = []
    run_sweep(runs, ["demo"], ["original"], [0], name="t", sets=dirs["sets"], log=notes.append)
    assert any(f"{run.id} finished with other values of lr_critic" in n for n in notes), notes
    # a config.json written before a field existed means that field's default: not a difference
    (run.path / "config.json").write_text(json.dumps({k: v for k, v in stored.items() if k != "official_lenet_head"}))
    notes = []
    run_sweep(runs, ["demo"], ["original"], [0], name="t", sets=dirs["sets"], log=notes.append)
    assert not any("finished with other values" in n for n in notes), notes
    (run.path / "config.json").write_text(json.dumps(stored))


def test_the_sweep_preflights_the_configs_its_runs_will_have(dirs, monkeypatch):
    """The source model's cache entry depends on a run's threads, which the executor sets (cores // parallel):
    preflight must look at those configs, not the grid's thread-less ones."""
    from dfg.source import source_key

    seen = []

    def record(configs, log=print):
        seen.extend(cfg for _, cfg in configs)
        raise ConfigError("stop here")
    monkeypatch.setattr("dfg.executors.preflight_all", record)
    with pytest.raises(ConfigError, match="stop here"):
        run_sweep(dirs["runs"], ["demo"], ["dfg"], [5, 6], name="pf", sets=dirs["sets"], parallel=2,
                  log=lambda m: None)
    threads = max(1, cpu_cores() // 2)
    assert [cfg.threads for cfg in seen] == [threads, threads]
    cell = expand_grid("pf", ["demo"], ["dfg"], [5], sets=parse_sets(dirs["sets"]))[0]
    assert source_key(seen[0], 1) == source_key(cell.config(threads), 1) != source_key(cell.config(), 1)
    assert not (dirs["runs"] / "sweeps" / "pf").exists()
    assert _changed_fixed({"rho": ["0.5"], "log_every": ["3"]}, {"rho": ["0.5", "1"], "threads": ["1"]}) == []


def test_a_threads_override_is_what_the_runs_get_and_what_the_sweep_says(dirs, monkeypatch):
    """--set threads=1 beats the executor's cores // parallel in every run's config, and the executor's line
    says so instead of naming only its own count."""
    monkeypatch.setattr("dfg.executors.LocalExecutor.run", lambda self, runs, on_done: [])
    for sets, threads, said in ((["threads=1"], 1, True), ([], max(1, cpu_cores() // 2), False)):
        lines = []
        run_sweep(dirs["runs"], ["demo"], ["dfg"], [7], name=f"th{threads}", sets=dirs["sets"] + sets, parallel=2,
                  log=lines.append)
        run_id = load_sweep(dirs["runs"], f"th{threads}")["grid"]["cells"][0]["run_id"]
        assert Run(dirs["runs"], run_id).config()["threads"] == threads
        executor_line = next(m for m in lines if m.startswith("local executor"))
        assert ("torch threads per run as --set threads gives them" in executor_line) == said, executor_line


def test_ray_sweep(dirs):
    pytest.importorskip("ray", reason="ray is not installed (pip install 'ray>=2.9')")
    runs = dirs["runs"]
    res = run_sweep(runs, ["demo"], ["original", "dfg"], [0, 1], name="r", sets=dirs["sets"], executor="ray",
                    log=lambda m: None)
    assert (res["ran"], res["finished"], res["failed"]) == (4, 4, 0)
    _check_table(runs, "r", load_sweep(runs, "r")["grid"]["cells"])


def test_importing_dfg_does_not_import_ray():
    code = "import sys, dfg, dfg.grid, dfg.sweep, dfg.executors, dfg.tables, dfg.cli; print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_grid_majority_combos_all_and_sampled():
    cells = expand_grid("g", ["demo"], ["dfg"], [0, 1], majority_combos="all")
    assert len(cells) == 2 * 45 == len({c.run_id for c in cells})
    assert {c.majority for c in cells} == set(itertools.combinations(range(10), 2))
    assert cells[0].config().majority == (0, 1) and cells[0].run_id.startswith("sw-g-demo-dfg-s0-m0.1-")
    sampled = expand_grid("g", ["demo"], ["dfg"], [0, 1], majority_combos="5")
    again = expand_grid("g", ["demo"], ["dfg"], [0, 1], majority_combos="5")
    assert [c.run_id for c in sampled] == [c.run_id for c in again] and len(sampled) == 10
    assert sorted({c.majority for c in sampled}) == majority_combinations(10, 2, sample=5, seed=0)
    k8 = expand_grid("g", ["demo"], ["dfg"], [0], majority_combos="all", sets=parse_sets(["num_majority=8"]))
    assert len(k8) == 45 and all(len(c.majority) == 8 for c in k8)
    assert len(expand_grid("g", ["demo"], ["dfg"], [0], majority_combos="45")) == 45
    with pytest.raises(ConfigError, match=r"--majority-combos 46 asks for more sets than preset 'demo' has: "
                                          r"C\(10, 2\) = 45 ways .*; give at most 45, or all"):
        expand_grid("g", ["demo"], ["dfg"], [0], majority_combos="46")
    with pytest.raises(ValueError, match="k=12 is invalid"):  # an impossible k is named as such
        expand_grid("g", ["demo"], ["dfg"], [0], majority_combos="3", sets=parse_sets(["num_majority=12"]))
    default = expand_grid("g", ["demo"], ["dfg"], [0, 1])
    assert [c.config().majority for c in default] == [(), ()] and "-mauto-" in default[0].run_id


def test_grid_multi_valued_sets_and_ids():
    sets = parse_sets(["rho=0,0.5,1", "steps=10,20", "limit_test=100"])
    assert varied(sets) == ["rho", "steps"]
    cells = expand_grid("x", ["demo", "fmnist"], ["original", "dfg"], [0, 1, 2], sets=sets)
    assert len(cells) == 2 * 3 * 2 * 2 * 3 == len({c.run_id for c in cells})
    assert all(check_run_id(c.run_id) for c in cells)
    assert [c.run_id for c in cells] == [c.run_id for c in expand_grid("x", ["demo", "fmnist"], ["original", "dfg"],
                                                                       [0, 1, 2], sets=sets)]
    cfgs = [c.config() for c in cells]
    assert {(c.rho, c.steps) for c in cfgs} == {(r, s) for r in (0.0, 0.5, 1.0) for s in (10, 20)}
    assert all(c.limit_test == 100 for c in cfgs)
    # same cell, other --set values -> another id
    assert expand_grid("x", ["demo"], ["dfg"], [0])[0].run_id != expand_grid(
        "x", ["demo"], ["dfg"], [0], sets=parse_sets(["rho=0.5"]))[0].run_id


def test_grid_rejects_bad_input():
    with pytest.raises(ConfigError, match="seed"):
        parse_sets(["seed=3"])
    with pytest.raises(ConfigError, match="majority-combos"):
        expand_grid("g", ["demo"], ["dfg"], [0], majority_combos="most")
    with pytest.raises(ConfigError, match="rho"):
        expand_grid("g", ["demo"], ["dfg"], [0], sets=parse_sets(["rho=0,2"]))
    with pytest.raises(ConfigError, match="name"):
        expand_grid("a/b", ["demo"], ["dfg"], [0])
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("0,5") == [0, 5]


def test_equal_set_values_are_one_cell_however_spelt():
    notes = []
    sets = parse_sets(["rho=0.5,0.50", "steps=1e3", "lr_extractor=0.0001,1e-4", "download=yes"], notes.append)
    assert sets == {"rho": ["0.5"], "steps": ["1000"], "lr_extractor": ["1e-4"], "download": ["true"]}
    assert notes == ["note: rho=0.50 repeats rho=0.5; the duplicate is dropped",
                     "note: lr_extractor=1e-4 repeats lr_extractor=0.0001; the duplicate is dropped"]
    assert varied(sets) == [] and varied(parse_sets(["rho=0.5,0.50,1"])) == ["rho"]
    cells = expand_grid("x", ["demo"], ["dfg"], [0], sets=sets)
    assert len(cells) == 1 and cells[0].config().rho == 0.5
    # a re-launch spelling the values otherwise finds the same runs
    other = parse_sets(["rho=0.500", "steps=1000", "lr_extractor=1e-4", "download=1"])
    assert [c.run_id for c in expand_grid("x", ["demo"], ["dfg"], [0], sets=other)] == [c.run_id for c in cells]
    # ordinary spellings keep the ids that sweeps got before values were parsed (the code at 17f110f); with a
    # bookkeeping key (download), that id is the cell's legacy_id, which a sweep adopts when only it exists
    for raw, ids in ((["rho=0.5", "steps=1000"], ["563fc1"]),
                     (["rho=0,0.25,0.5,0.75,1"], ["32fdb7", "cfeb20", "cb971f", "34a563", "874109"]),
                     (["lr_extractor=1e-4", "download=true"], ["034983"]),
                     (["source=glyphs+mnist5k", "lr_classifier=2e-4"], ["efd621"])):
        # (Original: the demo's target is MNIST-5k, which a DFG run may not have in its source any more)
        assert [c.legacy_id or c.run_id for c in expand_grid("x", ["demo"], ["original"], [0],
                                                             sets=parse_sets(raw))] \
            == [f"sw-x-demo-original-s0-mauto-{i}" for i in ids]


def test_preflight_groups_key_on_every_field_that_preflight_reads():
    """Configs that agree on PREFLIGHT_FIELDS are preflighted once: every field read by the data building and
    the source model checks must be among them (the method is handled apart), else a value that cannot work
    passes preflight and fails in its run folder."""
    import inspect
    import re

    from dfg import loop, preflight, source
    from dfg.executors import PREFLIGHT_FIELDS

    read = set()
    for f in (loop.load_data, preflight.preflight, source.source_key, source.refit_needed, source.source_classes):
        read |= set(re.findall(r"\bcfg\.(\w+)", inspect.getsource(f)))
    assert {"n_max", "seed", "ratio", "short_classes"} <= read
    assert read - {"method"} <= set(PREFLIGHT_FIELDS)


def _finished_sweep(runs, name="x"):
    """A sweep folder as a finished sweep leaves it; returns {path: bytes} to compare after a bad re-launch."""
    d = runs / "sweeps" / name
    d.mkdir(parents=True)
    (d / "grid.json").write_text('{"name": "x", "created": 1.0, "args": {"seeds": [0]}, "varied": [], "cells": []}\n')
    (d / "results.md").write_text("| F-MNIST | DFG | 3 | 82.00 ± 2.00 | 82.65 ± 0.28 |\n")
    return {f: f.read_bytes() for f in d.iterdir()}


def _bad_relaunch(tmp_path, capsys, *args):
    """`sweep --name x ...` over a finished sweep: exit code 2, one message, nothing written or started."""
    runs = tmp_path / "runs"
    before = _finished_sweep(runs)
    argv = ["sweep", "--name", "x", "--runs-dir", str(runs), "--set", f"data_root={tmp_path / 'data'}",
            *(a for s in TINY for a in ("--set", s)), *args]
    if "--presets" not in args:
        argv += ["--presets", "demo"]
    assert main(argv) == 2
    assert {f: f.read_bytes() for f in (runs / "sweeps" / "x").iterdir()} == before  # byte for byte, no new file
    assert [p.name for p in runs.iterdir()] == ["sweeps"]  # no run folder
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_failed_preflight_keeps_the_sweeps_grid(tmp_path, capsys):
    # num_majority=20 passes the config check but fails preflight (demo has 10 classes): grid.json stays
    err = _bad_relaunch(tmp_path, capsys, "--num-majority", "20")
    assert "num_majority=20 is invalid" in err


@pytest.mark.parametrize("order", ["600,300", "300,600"])
def test_preflight_checks_every_data_setting(tmp_path, capsys, order):
    # demo's majority classes have 400 images: n_max=600 fails preflight whatever its place in the grid
    err = _bad_relaunch(tmp_path, capsys, "--set", f"n_max={order}")
    assert "asks for 600" in err and "only 400 are available" in err


@pytest.mark.parametrize("args, shown", [(("--majority-combos", "0"), "'0'"), (("--majority-combos=-1",), "'-1'"),
                                         (("--majority-combos", "most"), "'most'"),
                                         (("--majority-combos", "0", "--presets", "stl10"), "'0'")])  # balanced too
def test_bad_majority_combos_names_the_flag(tmp_path, capsys, args, shown):
    err = _bad_relaunch(tmp_path, capsys, *args)
    assert f"--majority-combos {shown} is invalid: give 'all' or a whole number >= 1" in err and "sample=" not in err


@pytest.mark.parametrize("args, msg", [
    (("--seeds", "0"), "--seeds gives no seeds: give a count >= 1"),
    (("--seeds", "-1"), "--seeds gives no seeds"),
    (("--seeds", "0,-2"), "seed=-2 is invalid: must be a whole number in [0, 2^63)"),  # validation.validate
    (("--seeds", ","), "--seeds gives no seeds"),
    (("--methods", ""), "--methods is empty: give one or more of delta, dfg, difa_cmwgan"),
    (("--methods", " , "), "--methods is empty"),
    (("--presets", ","), "--presets is empty: give one or more of caltech256, cinic10, demo"),
])
def test_empty_grid_is_rejected_and_tables_kept(tmp_path, capsys, args, msg):
    assert msg in _bad_relaunch(tmp_path, capsys, *args)


def test_empty_grid_rejected_by_the_api():
    for presets, methods, seeds, flag in (([], ["dfg"], [0], "--presets"), (["demo"], [], [0], "--methods"),
                                          (["demo"], ["dfg"], parse_seeds("0"), "--seeds"),
                                          (["demo"], ["dfg"], parse_seeds(","), "--seeds"),
                                          (["demo"], ["dfg"], [-1], "seed=-1 is invalid")):
        with pytest.raises(ConfigError, match=flag):
            expand_grid("g", presets, methods, seeds)


def test_unknown_preset_or_method_lists_the_valid_names(tmp_path, capsys):
    err = _bad_relaunch(tmp_path, capsys, "--presets", "demo,nope")
    assert "--presets: unknown preset 'nope'; choose from caltech256, cinic10, demo, fmnist" in err
    err = _bad_relaunch(tmp_path / "m", capsys, "--methods", "dfg,nope")
    assert "--methods: unknown method 'nope'; choose from delta, dfg, difa_cmwgan, finetune, original" in err
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        expand_grid("g", ["nope"], ["dfg"], [0], majority_combos="all")


def test_a_runs_folder_that_cannot_be_written_is_named_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("dfg.jobs.writable_problem", lambda folder: "OSError: Read-only file system")
    err = _bad_relaunch(tmp_path, capsys, "--set", "rho=0.25")
    assert f"cannot write runs into {tmp_path / 'runs'} (OSError: Read-only file system); choose a runs folder" in err


@pytest.mark.parametrize("n", ["0", "-2"])
def test_parallel_below_one_is_rejected(tmp_path, capsys, n):
    assert f"--parallel must be >= 1 (got {n})" in _bad_relaunch(tmp_path, capsys, "--parallel", n)


def test_method_defaults_in_make_config():
    assert make_config("fmnist", {"method": "original"}).lr_extractor == 1e-3
    assert make_config("fmnist", {"method": "original", "lr_extractor": "2e-4"}).lr_extractor == 2e-4
    assert make_config("fmnist", {"method": "dfg"}).lr_extractor == 1e-5          # the preset's own rate
    assert make_config("caltech256", {"method": "original"}).lr_extractor == 0.01  # SGD presets keep theirs


def _row(dataset, method, top1, rho=0.75, state="finished", **kw):
    return {"run_id": f"r{top1}", "preset": dataset, "dataset": dataset, "method": method, "rho": rho,
            "state": state, "top1": top1, "balanced_acc": top1, "macro_f1": top1,
            "minority_recall": top1 / 2 if top1 else None, **kw}


def test_paper_values_and_rendering():
    assert paper_top1("fmnist", "dfg") == (82.65, 0.28) and paper_top1("mnist5k", "dfg") is None
    assert len(TABLE2) == 6 and all(len(v) == 5 for v in TABLE2.values())
    assert TABLE2["food101"]["original"] == (30.17, 1.72)
    assert figure6_top1("svhn", "dfg", 0.75) == 80.81 and figure6_top1("svhn", "dfg", 0) == 79.98
    rows = [_row("fmnist", "dfg", v) for v in (80.0, 82.0, 84.0)] + [_row("fmnist", "original", 70.0)]
    rows.append(_row("fmnist", "original", None, state="failed", error="boom"))
    summary = summarise([], [], rows=rows)
    dfg, orig = summary[1], summary[0]
    assert (dfg["n"], dfg["top1_mean"], dfg["top1_std"], dfg["minority_recall_mean"]) == (3, 82.0, 2.0, 41.0)
    assert (orig["n"], orig["n_runs"], orig["top1_std"]) == (1, 2, None) and "boom" in orig["notes"]
    md = summary_markdown(summary, [])
    assert "| F-MNIST | DFG | 3 | 82.00 ± 2.00 | 82.65 ± 0.28 |" in md
    assert "| F-MNIST | Original | 1 | 70.00 ± — | 77.13 ± 3.24 |" in md and "boom" in md
    tex = summary_latex(summary, [])
    assert r"$82.00 \pm 2.00$ & $82.65 \pm 0.28$" in tex
    repeated = summarise([], [], rows=[_row("fmnist", "dfg", 80.0, seed=0, majority="0 1"),
                                       {**_row("fmnist", "dfg", 80.0, seed=0, majority="0 1"), "run_id": "again"},
                                       _row("fmnist", "dfg", 84.0, seed=1, majority="0 1"),
                                       _row("fmnist", "dfg", 86.0, seed=0, majority="2 3")])[0]
    assert (repeated["n"], repeated["n_runs"], repeated["top1_mean"]) == (3, 4, 250 / 3)  # the second seed 0 once
    assert repeated["notes"] == "1 repeat(s) of a seed already counted left out: again (seed 0)"
    odd = [{**r, "folder": "/d/a_b#1$x{y}~^%&\\"} for r in rows[:1]]
    row = [line for line in summary_latex(summarise([], ["folder"], rows=odd), ["folder"]).splitlines()
           if "DFG" in line][0]
    assert (r"/d/a\_b\#1\$x\{y\}\textasciitilde{}\textasciicircum{}\%\&\textbackslash{}" in row), row


def test_table2_is_the_papers_table_digit_by_digit():
    """Every cell of Table 2 as printed (Original, Fine-tuning, DELTA, DIFA+cMWGAN, DFG), and the DFG − Original
    gains that §5 prints from it. §5's STL-10 gain, 14.73, does not follow from Table 2 (81.09 − 66.73 = 14.36):
    the paper contradicts itself there, and we keep Table 2's cells."""
    printed = {  # dfg-paper.txt lines 522-542
        "svhn": "76.57 ± 1.65 76.66 ± 0.65 78.47 ± 0.57 76.64 ± 1.32 80.81 ± 0.25",
        "fmnist": "77.13 ± 3.24 75.39 ± 3.54 78.91 ± 2.27 78.27 ± 2.32 82.65 ± 0.28",
        "stl10": "66.73 ± 0.67 72.89 ± 0.38 79.41 ± 0.27 80.08 ± 0.19 81.09 ± 0.17",
        "cinic10": "58.14 ± 3.42 64.42 ± 0.81 68.89 ± 0.18 71.82 ± 0.35 72.09 ± 0.20",
        "caltech256": "43.30 ± 0.34 81.99 ± 0.12 85.33 ± 0.15 82.23 ± 0.32 86.29 ± 0.19",
        "food101": "30.17 ± 1.72 68.99 ± 0.42 72.03 ± 0.35 71.71 ± 0.08 76.00 ± 0.36",
    }
    methods = ("original", "finetune", "delta", "difa_cmwgan", "dfg")
    for dataset, line in printed.items():
        cells = line.replace(" ± ", "±").split()
        assert {m: tuple(map(float, c.split("±"))) for m, c in zip(methods, cells)} == TABLE2[dataset], dataset
    gains = {"svhn": 4.24, "fmnist": 5.52, "stl10": 14.73, "cinic10": 13.95, "caltech256": 42.99, "food101": 45.83}
    for dataset, gain in gains.items():  # §5, dfg-paper.txt lines 753-754
        diff = round(TABLE2[dataset]["dfg"][0] - TABLE2[dataset]["original"][0], 2)
        assert (diff == gain) is (dataset != "stl10"), (dataset, diff, gain)


def test_rho_curve_has_paper_points():
    rows = [_row("svhn", "dfg", v, rho=r) for r, v in ((0.0, 79.0), (0.0, 81.0), (0.75, 80.0))]
    curve = rho_curve(rows, ["rho"])
    assert [c["rho"] for c in curve] == [0.0, 0.75]
    assert (curve[0]["svhn/dfg mean"], curve[0]["svhn/dfg n"], curve[0]["svhn/dfg paper"]) == (80.0, 2, 79.98)
    assert curve[1]["svhn/dfg std"] is None and curve[1]["svhn/dfg paper"] == 80.81


def test_a_damaged_run_is_named_in_its_sweep_and_the_sweep_still_shows(tmp_path):
    from dfg.views_results import sweeps

    cell = {"preset": "demo", "dataset": "mnist5k", "method": "dfg", "majority": [0, 1], "sets": {}, "values": {}}
    grid = {"name": "s", "created": 1.0, "args": {}, "varied": [],
            "cells": [{**cell, "run_id": "broken", "seed": 0}, {**cell, "run_id": "later", "seed": 1}]}
    (tmp_path / "sweeps" / "s").mkdir(parents=True)
    (tmp_path / "sweeps" / "s" / "grid.json").write_text(json.dumps(grid))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"broken')
    shown = sweeps(tmp_path)
    assert [s["name"] for s in shown] == ["s"]
    assert [r["state"] for r in shown[0]["runs"]] == ["damaged", "pending"]
    notes = shown[0]["summary"][0]["notes"]
    assert "1 damaged, 1 pending" in notes and "config.json is not valid JSON" in notes
    assert "delete the run's folder to start it anew" in notes


def test_config_values_are_labelled_exactly_and_each_label_has_its_own_mean(tmp_path):
    """Varied settings that differ only after two decimals (ρ 0.12 and 0.125; lr 0.01 and 0.015) are distinct
    rows in results.md, results.tex and rho_curve.md, each beside its own mean; measured numbers stay at 2 dp."""
    from dfg.grid import canonical
    from dfg.tables import write_tables

    rows = [_row("fmnist", "dfg", 50.0, rho=0.12, seed=0), _row("fmnist", "dfg", 52.0, rho=0.12, seed=1),
            _row("fmnist", "dfg", 60.0, rho=0.125, seed=0)]
    files = {n: p.read_text() for n, p in write_tables(tmp_path / "rho", rows, ["rho"]).items()}
    md, tex, curve = files["results.md"], files["results.tex"], files["rho_curve.md"]
    assert "| F-MNIST | DFG | 0.12 | 2 | 51.00 ± 1.41 |" in md and "| F-MNIST | DFG | 0.125 | 1 | 60.00 ± — |" in md
    assert r"F-MNIST & DFG & 0.12 & 2 & $51.00 \pm 1.41$" in tex
    assert r"F-MNIST & DFG & 0.125 & 1 & $60.00 \pm$ --" in tex
    assert "| 0.12 | 51.00 | 1.41 | 2 |" in curve and "| 0.125 | 60.00 | — | 1 |" in curve

    lrs = {1e-4: 40.0, 1.5e-4: 41.0, 1e-5: 42.0, 0.01: 43.0, 0.015: 44.0}
    rows = [_row("fmnist", "dfg", top1, lr_extractor=lr, seed=0) for lr, top1 in lrs.items()]
    summary = summarise([], ["lr_extractor"], rows=rows)
    md, tex = summary_markdown(summary, ["lr_extractor"]), summary_latex(summary, ["lr_extractor"])
    for text, top1 in zip(("1e-4", "1.5e-4", "1e-5", "0.01", "0.015"), lrs.values()):
        assert f"| F-MNIST | DFG | {text} | 1 | {top1:.2f} ± — |" in md, (text, md)
        assert f"F-MNIST & DFG & {text} & 1 & ${top1:.2f} \\pm$ --" in tex, (text, tex)
    from dfg.tables import value_text

    for key, text in (("rho", "0.125"), ("rho", "0.12"), ("rho", "1.0"), ("rho", "0"), ("lr_extractor", "1e-05"),
                      ("lr_extractor", "0.0001"), ("lr_extractor", "1.5e-4"), ("lr_extractor", "0.015"),
                      ("lr_extractor", "0.01"), ("lr_extractor", "3.3333e-7")):
        assert value_text(float(text)) == canonical(key, text), text  # the text the sweep's --set value has
    assert [value_text(v) for v in (None, True, 3, "a_b")] == ["—", "true", "3", "a_b"]


def test_latex_states_the_runs_not_counted_and_the_notes_escaped():
    """A group with 1 finished run of 4 reads n = 1/4 in the LaTeX, with the notes the Markdown has (failed,
    diverged and pending runs, their errors), every LaTeX special character of run ids and errors escaped."""
    import re

    rows = [_row("fmnist", "dfg", 80.0, seed=0),
            {**_row("fmnist", "dfg", None, state="diverged", seed=1), "run_id": "d_1",
             "error": "loss L_D became nan at step 5"},
            {**_row("fmnist", "dfg", None, state="failed", seed=2), "run_id": "run_5%x",
             "error": "RuntimeError: a|b & c #1 {x}\n\n  at <module> ~$"},
            {**_row("fmnist", "dfg", None, state="pending", seed=3), "run_id": "p"}]
    summary = summarise([], [], rows=rows)
    assert (summary[0]["n"], summary[0]["n_runs"]) == (1, 4)
    md, tex = summary_markdown(summary, []), summary_latex(summary, [])
    assert "1 diverged, 1 failed, 1 pending" in md
    assert r"F-MNIST & DFG & 1/4 & $80.00 \pm$ -- & $82.65 \pm 0.28$" in tex
    notes = tex.split(r"\bottomrule")[1]
    assert "1 diverged, 1 failed, 1 pending" in notes and r"d\_1: loss L\_D became nan at step 5" in notes
    assert (r"run\_5\%x: RuntimeError: a\textbar{}b \& c \#1 \{x\} at \textless{}module\textgreater{} "
            r"\textasciitilde{}\$") in notes, notes
    assert "\n\n" not in tex  # a blank line would end the paragraph the tabular is in
    spec = re.match(r"\\begin\{tabular\}\{([lr]+)\}", tex).group(1)
    for line in notes.strip().splitlines()[:-1]:  # each note a full-width row of the tabular
        assert line.startswith(rf"\multicolumn{{{len(spec)}}}{{l}}{{\footnotesize ") and line.endswith(r"} \\")
        body = line[len(rf"\multicolumn{{{len(spec)}}}{{l}}{{\footnotesize "):-len(r"} \\")]
        assert not re.search(r"(?<!\\)[_%&#$|<>]", body), body
    assert notes.strip().endswith(r"\end{tabular}")
    clean = summary_latex(summarise([], [], rows=rows[:1]), [])
    assert r"F-MNIST & DFG & 1 & $80.00 \pm$ --" in clean and r"\multicolumn" not in clean


def test_bookkeeping_values_keep_a_sweeps_run_ids(dirs, tmp_path, monkeypatch):
    """data_root elsewhere, a device or threads given: the same experiment, so the same run ids (a
    re-launch skips and resumes its runs instead of training them anew); a run made when those keys were hashed
    is found under its old id; and a sweep cannot vary them."""
    from dfg.grid import _short_hash
    from dfg.sweep import _adopt_legacy

    monkeypatch.setattr("dfg.executors.LocalExecutor.run", lambda self, runs, on_done: [])
    monkeypatch.setattr("dfg.executors.preflight_all", lambda configs, log=print: None)
    runs = tmp_path / "runs"
    ids = []
    for extra in ([f"data_root={tmp_path / 'd1'}"], [f"data_root={tmp_path / 'd2'}", "device=cpu"],
                  [f"data_root={tmp_path / 'd1'}", "threads=1"]):
        run_sweep(runs, ["demo"], ["dfg"], [3], name="b", sets=TINY + extra, log=lambda m: None)
        ids.append(load_sweep(runs, "b")["grid"]["cells"][0]["run_id"])
    assert ids[0] == ids[1] == ids[2]
    cell = expand_grid("c", ["demo"], ["dfg"], [0], sets=parse_sets(["steps=6", "threads=1"]))[0]
    assert cell.legacy_id == cell.run_id[:-6] + _short_hash({"steps": "6", "threads": "1"}) != cell.run_id
    Run.create(runs, cell.legacy_id, cell.config().to_dict())
    assert _adopt_legacy(runs, cell).run_id == cell.legacy_id  # only the old id exists: that run is this cell
    Run.create(runs, cell.run_id, cell.config().to_dict())
    assert _adopt_legacy(runs, cell).run_id == cell.run_id
    assert expand_grid("c", ["demo"], ["dfg"], [0], sets=parse_sets(["steps=6"]))[0].legacy_id is None
    with pytest.raises(ConfigError, match=r"--set log_every=2,3: log_every .* no axis of a sweep"):
        expand_grid("c", ["demo"], ["dfg"], [0], sets=parse_sets(["log_every=2,3"]))


def test_a_failed_ray_task_is_recorded_with_the_error_raised_inside_it():
    """Ray's own header line ('RayTaskError(RunError): ray::work() (pid=…, ip=…)', in colour) says nothing;
    the record names the task's exception, and for a run folder the task cannot see, the shared-storage rule."""
    from dfg.ray_executor import ray_error
    from dfg.runstore import RunError

    class RayTaskError(Exception):  # what ray.get raises: the task's exception as .cause
        def __init__(self, cause):
            super().__init__("\x1b[36mray::work()\x1b[39m (pid=25475, ip=192.0.2.2)\n  File ...\n")
            self.cause = cause
    text = ray_error(RayTaskError(RunError("no run 'x' in /mnt/runs (expected /mnt/runs/x/config.json)")))
    assert text == ("ray task failed: RunError: no run 'x' in /mnt/runs (expected /mnt/runs/x/config.json) "
                    "(the runs folder must be storage that every Ray node sees at the same path)")
    assert ray_error(RuntimeError("\x1b[31mworker died\x1b[0m\nmore")) == "ray task failed: RuntimeError: worker died"


def test_a_ray_address_where_nothing_answers_is_named_at_once():
    """ray.init would wait without end on it."""
    pytest.importorskip("ray")
    from dfg.executors import make_executor
    for address in ("127.0.0.1:1", "ray://127.0.0.1:1"):
        with pytest.raises(RuntimeError, match=r"--address .*127.0.0.1:1: nothing answers at 127.0.0.1:1 .*Ray "
                                               r"cluster is up"):
            make_executor("ray", address)


def test_a_run_another_process_trains_is_reported_as_running_elsewhere_not_failed(tmp_path):
    """Two sweeps (or a sweep and the app's Resume) started one run at once: the worker that found it taken
    gives way, and its sweep says the run is trained elsewhere instead of counting it failed."""
    import os
    import time
    from dfg.executors import outcome

    run = Run.create(tmp_path, "r", {"seed": 0})
    run.set_status(state="running", pid=os.getpid(), heartbeat=time.time())
    r = outcome(run, 1.0)
    assert r["state"] == "running elsewhere" and f"pid {os.getpid()}" in r["error"] and r["top1"] is None
    run.set_status(state="stopped")
    assert outcome(run, 1.0)["state"] == "stopped"
    from dfg.executors import LocalExecutor
    run.set_status(state="running", pid=os.getpid(), heartbeat=time.time())
    seen = []
    assert [r["state"] for r in LocalExecutor(1).run([run], seen.append)] == ["running elsewhere"] == \
        [r["state"] for r in seen]  # started meanwhile by another process: no second worker is spawned
    assert not (run.path / "worker.pid").exists()
