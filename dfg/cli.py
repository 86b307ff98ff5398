"""Command line: `python -m dfg {train,resume,eval,pretrain,presets,runs,data,worker,sweep}`."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import textwrap
import time
from pathlib import Path

from .config import (DATA_ROOT_ENV, FIELD_TYPES, Config, ConfigError, default_data_root,
                     default_runs_dir, field_docs, from_dict, make_config,
                     with_absolute_data_root)
from .presets import PRESET_NOTES, PRESETS


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One --flag per Config field (text, parsed by the field's type), plus --set key=value."""
    p.add_argument("--preset", default="demo", help=f"one of {', '.join(PRESETS)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable)")
    g = p.add_argument_group("config fields", "Every config field is also a flag, --key-with-dashes VALUE: "
                             "--pretrain-steps 5 is --set pretrain_steps=5. `python -m dfg presets --fields` "
                             "lists the fields with their defaults and meaning.")
    for f in dataclasses.fields(Config):
        if f.name != "preset":
            g.add_argument("--" + f.name.replace("_", "-"), dest="cfg_" + f.name, default=None, metavar="V",
                           help=argparse.SUPPRESS)


def _env_data_root(given) -> str | None:
    """DFG_DATA_ROOT, as the app reads it, when the command line's `given` field names hold no data_root."""
    return None if "data_root" in given else os.environ.get(DATA_ROOT_ENV) or None


def config_from_args(args) -> Config:
    """The preset with the command line's values. A field given twice (two --set, or --set and its --flag)
    is refused rather than silently resolved. A relative data_root is made absolute, so `eval` and `resume`
    find the same data and source cache from any folder."""
    overrides = {}
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set rho=0.5")
        k, v = (t.strip() for t in item.split("=", 1))
        if k in overrides:
            raise ConfigError(f"{k} is set twice ({overrides[k]!r} and {v!r}); give it once")
        overrides[k] = v
    for name in FIELD_TYPES:
        v = getattr(args, "cfg_" + name, None)
        if v is not None:
            if name in overrides:
                raise ConfigError(f"{name} is set twice (--set {name}={overrides[name]} and "
                                  f"--{name.replace('_', '-')} {v}); give it once")
            overrides[name] = v
    if env := _env_data_root(overrides):
        overrides["data_root"] = env
    cfg = make_config(args.preset, overrides)
    return with_absolute_data_root(cfg)


class ProgressBar:
    """One updating line on stderr: bar, step, steps/s, ETA and the current losses."""

    KEYS = ("L_D", "L_G", "L_E", "L_rC", "L_C", "GP")

    def __init__(self, stream=sys.stderr):
        self.stream = stream

    def __call__(self, step: int, total: int, rate: float, row: dict) -> None:
        width = 24
        done = int(width * step / total)
        eta = (total - step) / rate if rate > 0 else float("inf")
        losses = " ".join(f"{k}={row[k]:.3f}" for k in self.KEYS if k in row)
        self.stream.write(f"\r[{'#' * done}{'.' * (width - done)}] {step}/{total} {rate:.1f} it/s "
                          f"ETA {eta:4.0f}s {losses}   ")
        if step == total:
            self.stream.write("\n")
        self.stream.flush()


def new_run_id(cfg: Config) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.preset}-{cfg.method}-s{cfg.seed}"


def cmd_train(args) -> int:
    from .jobs import create_checked, launch
    from .loop import train

    cfg = config_from_args(args)
    run, data = create_checked(cfg, args.runs_dir, new_run_id(cfg) if args.run_id is None else args.run_id)
    print(f"run {run.id} in {run.path}", file=sys.stderr)
    if args.background:
        pid = launch(run)
        print(f"training in the background (pid {pid}); follow with `python -m dfg runs --runs-dir {args.runs_dir}`")
        return 0
    try:
        status = train(cfg, run, progress=ProgressBar(), log=lambda m: print(m, file=sys.stderr), data=data)
    except KeyboardInterrupt:
        return _interrupted(run, args.runs_dir)
    return _report(run, status)


def _interrupted(run, runs_dir) -> int:
    """Ctrl-C: the loop has recorded the run as interrupted; say how to continue it (exit code 130)."""
    print(f"\ninterrupted at step {run.status().get('step', 0)}; continue with "
          f"`python -m dfg resume {run.id} --runs-dir {runs_dir}`", file=sys.stderr)
    return 130


def _report(run, status: dict) -> int:
    final = run.read_record("final.json")
    last = final.get("last") or {}
    print(json.dumps({"run": run.id, "state": status["state"], "step": status.get("step"),
                      "error": status.get("error"),
                      **{k: last.get(k) for k in ("top1", "balanced_acc", "macro_f1", "minority_recall")}}))
    return 0 if status["state"] in ("finished", "stopped") else 1


def cmd_resume(args) -> int:
    from .jobs import check_writable
    from .loop import train
    from .runstore import Run

    run = Run(args.runs_dir, args.run).require()
    cfg = from_dict(run.config())
    s = run.status()
    if s.get("state") == "finished" and (s.get("step") or 0) >= cfg.steps:
        print(f"run {run.id} already finished at step {s['step']}/{cfg.steps}: nothing to resume "
              f"(`python -m dfg eval {run.id}` re-evaluates its checkpoint)", file=sys.stderr)
        return 0
    check_writable(run)
    try:
        status = train(cfg, run, resume=True, progress=ProgressBar(), log=lambda m: print(m, file=sys.stderr))
    except KeyboardInterrupt:
        return _interrupted(run, args.runs_dir)
    return _report(run, status)


def cmd_worker(args) -> int:
    """Internal: the background process the app and `train --background` start."""
    from .loop import train
    from .runstore import Run, RunBusyError

    run = Run(args.runs_dir, args.run).require()
    try:
        cfg = from_dict(run.config())
        status = train(cfg, run, resume=True, log=lambda m: print(m, flush=True), keep_stop=True)
    except RunBusyError as e:  # another worker owns the run: leave its status alone
        print(f"error: {e}", flush=True)
        return 1
    except Exception as e:  # recorded for the app; the traceback goes to log.txt
        import traceback
        traceback.print_exc()
        run.set_status(state="failed", error=f"{type(e).__name__}: {e}")
        return 1
    return 0 if status["state"] in ("finished", "stopped") else 1


def cmd_eval(args) -> int:
    from .loop import run_eval
    from .restored import restore
    from .runstore import Run

    cfg, data, method, step = restore(Run(args.runs_dir, args.run), args.device,
                                      log=lambda m: print(m, file=sys.stderr))
    m = run_eval(method, data, method.ctx.device)
    print(json.dumps({"run": args.run, "step": step, **{k: v for k, v in m.items() if k != "confusion"}}))
    return 0


def cmd_pretrain(args) -> int:
    import torch

    from .loop import load_data, resolve_device
    from .source import pretrain_source, source_key

    cfg = config_from_args(args)
    device = resolve_device(cfg.device)
    if cfg.threads:  # as a run's setup does: the cache entry is per thread count (source_key)
        torch.set_num_threads(cfg.threads)
    data = load_data(cfg)
    t0 = time.perf_counter()
    pretrain_source(cfg, data.in_channels, device,
                    progress=lambda s, n, l: print(f"\rpretrain {s}/{n} loss {l:.3f}", end="", file=sys.stderr))
    print(f"\nsource model {source_key(cfg, data.in_channels, device)} ready in {time.perf_counter() - t0:.1f}s "
          f"(cache: {Path(cfg.data_root) / 'sources'})")
    return 0


def cmd_presets(args) -> int:
    if args.fields:
        docs = field_docs()
        for f in dataclasses.fields(Config):
            print(f"{f.name:28s} {getattr(f.type, '__name__', f.type)!s:16s} default={f.default!r}")
            if f.name in docs:
                print(textwrap.fill(docs[f.name], width=110, initial_indent=" " * 4, subsequent_indent=" " * 4))
        return 0
    for name, cfg in PRESETS.items():
        print(f"{name:11s} {PRESET_NOTES[name]}")
    return 0


def cmd_runs(args) -> int:
    from .runstore import RunError, list_runs

    if Path(args.runs_dir).exists() and not Path(args.runs_dir).is_dir():
        raise RunError(f"--runs-dir {args.runs_dir} is a file, not a folder of runs")
    for run in list_runs(args.runs_dir):
        s = run.status()
        try:
            run.config()
            problem = f"  error: {s['error']}" if s.get("error") and s.get("state") != "finished" else ""
        except RunError as e:  # its status would promise a resume that cannot start
            problem = f"  damaged: {e}"
        print(f"{run.id:50s} {s.get('state', '?'):12s} step {s.get('step', 0)}/{s.get('total_steps', '?')}"
              + (f"  top1={s['top1']:.4f}" if s.get("top1") is not None else "") + problem)
    return 0


def cmd_data(args) -> int:
    from .data import DATASETS, download_dataset

    if args.download:
        download_dataset(args.download, args.data_root)
        print(f"{args.download} ready under {args.data_root}")
        return 0
    for name, spec in DATASETS.items():
        print(f"{name:16s} {spec.num_classes:4d} classes  {'offline' if spec.offline else 'needs files'}  "
              f"{spec.description}")
    return 0


RUNS_HELP = "runs folder (default: $DFG_RUNS_DIR, else ./runs)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dfg", description="Discriminative Feature Generation (DFG)",
                                allow_abbrev=False)
    shown = "{train,resume,eval,pretrain,presets,runs,data,sweep}"  # `worker` is internal: not listed
    sub = p.add_subparsers(dest="cmd", required=True, metavar=shown)
    sub.add_parser = functools.partial(sub.add_parser, allow_abbrev=False)  # --rh must not mean --rho
    t = sub.add_parser("train", help="train a run (DFG or a baseline) from a preset")
    _add_config_flags(t)
    t.add_argument("--runs-dir", default=default_runs_dir(), help=RUNS_HELP)
    t.add_argument("--run-id", default=None, help="the run folder's name (default: "
                   "<yyyymmdd-hhmmss>-<preset>-<method>-s<seed>)")
    t.add_argument("--background", action="store_true", help="train in a detached worker process")
    t.set_defaults(fn=cmd_train)
    for name, fn, hlp in (("resume", cmd_resume, "continue a run from its last checkpoint"),
                          ("eval", cmd_eval, "re-evaluate a run's checkpoint on the test set"),
                          ("worker", cmd_worker, None)):
        s = sub.add_parser(name, **({"help": hlp} if hlp else {}))  # no help: left out of the listing
        s.add_argument("run")
        s.add_argument("--runs-dir", default=default_runs_dir(), help=RUNS_HELP)
        if name == "eval":
            s.add_argument("--device", default=None, help="evaluate on this device (cpu, cuda, cuda:1) "
                           "instead of the run's own")
        s.set_defaults(fn=fn)
    pt = sub.add_parser("pretrain", help="train (or reuse) the preset's source model")
    _add_config_flags(pt)
    pt.set_defaults(fn=cmd_pretrain)
    pr = sub.add_parser("presets", help="list presets (or --fields: every config field)")
    pr.add_argument("--fields", action="store_true")
    pr.set_defaults(fn=cmd_presets)
    r = sub.add_parser("runs", help="list runs and their state")
    r.add_argument("--runs-dir", default=default_runs_dir(), help=RUNS_HELP)
    r.set_defaults(fn=cmd_runs)
    d = sub.add_parser("data", help="list datasets, or --download NAME")
    d.add_argument("--download", default=None, metavar="NAME")
    d.add_argument("--data-root", default=default_data_root(),
                   help="datasets and cached source models (default: $DFG_DATA_ROOT, else ./data)")
    d.set_defaults(fn=cmd_data)
    _add_sweep_parser(sub)
    return p


def _add_sweep_parser(sub) -> None:
    s = sub.add_parser("sweep", help="run a grid (presets x methods x seeds x majority sets x --set values) "
                                     "and write results tables; re-launch to resume")
    s.add_argument("--presets", required=True, help="comma-separated presets, e.g. fmnist,svhn")
    s.add_argument("--methods", default="dfg", help="comma-separated methods (default dfg), e.g. original,dfg")
    s.add_argument("--seeds", default="1", help="a count (10 = seeds 0..9) or a list (0,3,7); default 1")
    s.add_argument("--majority-combos", default=None, metavar="all|K",
                   help="majority-class sets: all C(n,k), or K sampled (seeded); default: each seed's own draw")
    s.add_argument("--num-majority", type=int, default=None, metavar="K", help="k majority classes")
    s.add_argument("--set", action="append", default=[], metavar="KEY=V[,V...]",
                   help="config override; several comma-separated values add a grid axis (--set rho=0,0.5,1)")
    s.add_argument("--executor", default="local", choices=("local", "ray"))
    s.add_argument("--address", default=None, help="Ray cluster address (default env RAY_ADDRESS, "
                                                   "else a local Ray instance); --runs-dir must be shared storage")
    s.add_argument("--parallel", type=int, default=None, help="runs at a time on CPU (default 1; GPUs: one each)")
    s.add_argument("--runs-dir", default=default_runs_dir(), help=RUNS_HELP)
    s.add_argument("--name", default=None, help="sweep name (default: the presets joined by '-')")
    s.add_argument("--replace", action="store_true", help="re-launch a sweep with other fixed --set values "
                                                           "under the same name (its tables follow the new grid)")
    s.set_defaults(fn=cmd_sweep)


def cmd_sweep(args) -> int:
    """A grid of runs (dfg/sweep.py); prints its results table. Exit 1 when a run failed."""
    from .grid import parse_seeds, split_commas
    from .sweep import run_sweep
    sets = list(args.set)
    if env := _env_data_root({t.split("=", 1)[0].strip() for t in sets}):
        sets.insert(0, f"data_root={env}")
    try:
        res = run_sweep(args.runs_dir, split_commas(args.presets), split_commas(args.methods), parse_seeds(args.seeds),
                        name=args.name, majority_combos=args.majority_combos, num_majority=args.num_majority,
                        sets=sets, executor=args.executor, address=args.address, parallel=args.parallel,
                        replace=args.replace)
    except KeyboardInterrupt:
        return 130
    print((Path(res["dir"]) / "results.md").read_text())
    return 0 if res["failed"] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as e:  # OSError: an unwritable folder, a file where one is expected
        print(f"error: {e}", file=sys.stderr)
        return 2
