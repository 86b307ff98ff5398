"""Command line: `python -m dfg {train,resume,eval,pretrain,presets,runs,data,worker,sweep}`."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path

from .cli_args import build_parser  # noqa: F401 (the parser; tests and tools build it from here)
from .config import (BOOKKEEPING, DATA_ROOT_ENV, FIELD_TYPES, Config, ConfigError, field_docs, from_dict,
                     make_config, parse_value, with_absolute_data_root)
from .presets import PRESET_NOTES, PRESETS


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
    from .validation import unused_fields
    for note in unused_fields(cfg, overrides):
        print(f"note: {note}", file=sys.stderr)
    return with_absolute_data_root(cfg)


class ProgressBar:
    """One updating line on stderr: bar, step, steps/s, ETA and the current losses. On a terminal the line is
    cut to its width (a wrapped line cannot be redrawn in place); a shorter line blanks what the longer one
    before it left."""

    KEYS = ("L_D", "L_G", "L_E", "L_rC", "L_C", "GP")

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.shown = 0  # length of the line on screen; 0: none open

    def __call__(self, step: int, total: int, rate: float, row: dict) -> None:
        width = 24
        done = int(width * step / total)
        eta = (total - step) / rate if rate > 0 else float("inf")
        losses = " ".join(f"{k}={row[k]:.3f}" for k in self.KEYS if k in row)
        line = f"[{'#' * done}{'.' * (width - done)}] {step}/{total} {rate:.1f} it/s ETA {eta:4.0f}s {losses}"
        if self.stream.isatty():
            line = line[:max(20, shutil.get_terminal_size().columns - 1)]
        self.stream.write("\r" + line.ljust(self.shown))
        self.shown = len(line)
        if step == total:
            self.close()
        self.stream.flush()

    def close(self) -> None:
        """End the open line, so what is printed next starts on its own."""
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = 0


def cmd_train(args) -> int:
    from .jobs import create_checked, launch

    cfg = config_from_args(args)
    run, data = create_checked(cfg, args.runs_dir, args.run_id)
    print(f"run {run.id} in {run.path}", file=sys.stderr)
    if args.background:
        pid = launch(run)
        print(f"training in the background (pid {pid}); follow with `python -m dfg runs --runs-dir {args.runs_dir}`")
        return 0
    return _train_here(cfg, run, args.runs_dir, data=data)


def _train_here(cfg: Config, run, runs_dir, **kw) -> int:
    """Train in this process with a progress bar; the exit code says how it ended: 0 finished (or stopped on
    request), 130 Ctrl-C, 143 SIGTERM (a scheduler reads 0 as done and would not requeue), 1 failed."""
    from .jobs import sigterm_stopped
    from .loop import train

    bar = ProgressBar()
    try:
        status = train(cfg, run, progress=bar, log=lambda m: (bar.close(), print(m, file=sys.stderr)), **kw)
    except KeyboardInterrupt:
        bar.close()
        return _stopped(run, runs_dir, "interrupted", f"its last checkpoint (one every ckpt_every={cfg.ckpt_every} "
                        "steps)", 130)
    bar.close()
    if status["state"] == "stopped" and sigterm_stopped(run):
        where = "there (checkpoint written)" if run.checkpoint_path.exists() else "the start (no checkpoint yet)"
        return _report(run, status, _stopped(run, runs_dir, "stopped by SIGTERM", where, 143))
    return _report(run, status)


def _stopped(run, runs_dir, how: str, where: str, code: int) -> int:
    """Say where the run stopped and how to continue it; returns `code`."""
    print(f"{how} at step {run.status().get('step', 0)}; continue with `python -m dfg resume {run.id} --runs-dir "
          f"{runs_dir}`, from {where}", file=sys.stderr)
    return code


def _report(run, status: dict, code: int | None = None) -> int:
    from .runstore import as_record
    last = as_record(run.read_record("final.json").get("last"))
    print(json.dumps({"run": run.id, "state": status["state"], "step": status.get("step"),
                      "error": status.get("error"),
                      **{k: last.get(k) for k in ("top1", "balanced_acc", "macro_f1", "minority_recall")}}))
    return code if code is not None else 0 if status["state"] in ("finished", "stopped") else 1


def cmd_resume(args) -> int:
    from .jobs import check_writable
    from .runstore import Run

    run = Run(args.runs_dir, args.run).require()
    cfg = from_dict(run.config())
    s = run.status()
    if s.get("state") == "finished" and (s.get("step") or 0) >= cfg.steps:
        print(f"run {run.id} already finished at step {s['step']}/{cfg.steps}: nothing to resume "
              f"(`python -m dfg eval {run.id} --runs-dir {args.runs_dir}` re-evaluates its checkpoint)",
              file=sys.stderr)
        return 0
    check_writable(run)
    if args.set:
        cfg = _reporting_changes(run, cfg, args.set)
    return _train_here(cfg, run, args.runs_dir, resume=True)


def _reporting_changes(run, cfg: Config, sets: list[str]) -> Config:
    """resume --set: new values of the BOOKKEEPING fields (a run moved to another machine: threads, device,
    data_root), written to config.json before the run continues. A field that changes what the run computes is
    refused: the rows so far were made with the old value."""
    from .jobs import worker_busy
    from .runstore import RunBusyError
    from .validation import validate

    changes = {}
    for item in sets:
        k, sep, v = (t.strip() for t in item.partition("="))
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set threads=1")
        if k not in BOOKKEEPING:
            raise ConfigError(f"{k} cannot change on resume: the run's rows so far were computed with {k}="
                              f"{getattr(cfg, k, '?')!r}; resume --set takes {', '.join(sorted(BOOKKEEPING))}; "
                              "start a new run for another value")
        if k in changes:
            raise ConfigError(f"{k} is set twice; give it once")
        changes[k] = parse_value(k, v)
    if pid := worker_busy(run):
        raise RunBusyError(f"run {run.id!r} is being trained by another process (pid {pid}); stop it first")
    cfg = with_absolute_data_root(validate(dataclasses.replace(cfg, **changes)))
    from .loop import resolve_device
    resolve_device(cfg.device)  # a device this machine lacks is refused before config.json is written
    run.write_json("config.json", cfg.to_dict())
    return cfg


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

    try:
        cfg, data, method, step = restore(Run(args.runs_dir, args.run), args.device,
                                          log=lambda m: print(m, file=sys.stderr))
    except RuntimeError as e:
        if "CUDA is not available" in str(e) and args.device is None:  # the run trained on a GPU
            raise RuntimeError(f"{e.args[0].split('; ')[0]}; evaluate here with --device cpu") from None
        raise
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
    where = ("torchvision's ImageNet weights, from the torch cache: nothing is trained or cached here"
             if cfg.source == "imagenet" else f"cache: {Path(cfg.data_root) / 'sources'}")
    print(f"\nsource model {source_key(cfg, data.in_channels, device)} ready in {time.perf_counter() - t0:.1f}s "
          f"({where})")
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
            from_dict(run.config())  # fields this version does not know, values of the wrong type
            problem = f"  error: {s['error']}" if s.get("error") and s.get("state") != "finished" else ""
        except (RunError, ConfigError) as e:  # its status would promise a resume that cannot start
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


COMMANDS = {"train": cmd_train, "resume": cmd_resume, "eval": cmd_eval, "worker": cmd_worker,
            "pretrain": cmd_pretrain, "presets": cmd_presets, "runs": cmd_runs, "data": cmd_data, "sweep": cmd_sweep}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.cmd](args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as e:  # OSError: an unwritable folder, a file where one is expected
        print(f"error: {e}", file=sys.stderr)
        return 2
