"""The command line's grammar (argparse): one parser per subcommand, every Config field as a flag. A flag
given twice is an error, not silently the last value. Each subcommand names its handler in `cmd`, which
dfg.cli.main dispatches."""
from __future__ import annotations

import argparse
import dataclasses

from .config import Config, default_data_root, default_runs_dir
from .presets import PRESETS

RUNS_HELP = "runs folder (default: $DFG_RUNS_DIR, else ./runs)"


class _Once(argparse.Action):
    """argparse's store, refusing a second occurrence: `--steps 1 --steps 2` trained 2 steps without a word."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_given", set())
        if self.dest in given:
            parser.error(f"{option_string} is given twice; give it once")
        given.add(self.dest)
        setattr(namespace, self.dest, values)


def _subparser(sub, name: str, **kw) -> argparse.ArgumentParser:
    p = sub.add_parser(name, allow_abbrev=False, **kw)  # --rh must not mean --rho
    p.register("action", None, _Once)
    p.register("action", "store", _Once)
    p.set_defaults(cmd=name)
    return p


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dfg", description="Discriminative Feature Generation (DFG)",
                                allow_abbrev=False)
    shown = "{train,resume,eval,pretrain,presets,runs,data,sweep}"  # `worker` is internal: not listed
    sub = p.add_subparsers(dest="command", required=True, metavar=shown)
    t = _subparser(sub, "train", help="train a run (DFG or a baseline) from a preset")
    _add_config_flags(t)
    t.add_argument("--runs-dir", default=default_runs_dir(), help=RUNS_HELP)
    t.add_argument("--run-id", default=None, help="the run folder's name (default: "
                   "<yyyymmdd-hhmmss>-<preset>-<method>-s<seed>, with -2, -3... when taken)")
    t.add_argument("--background", action="store_true", help="train in a detached worker process")
    for name, hlp in (("resume", "continue a run from its last checkpoint"),
                      ("eval", "re-evaluate a run's checkpoint on the test set"), ("worker", None)):
        s = _subparser(sub, name, **({"help": hlp} if hlp else {}))  # no help: left out of the listing
        s.add_argument("run")
        s.add_argument("--runs-dir", default=default_runs_dir(), help=RUNS_HELP)
        if name == "eval":
            s.add_argument("--device", default=None, help="evaluate on this device (cpu, cuda, cuda:1) "
                           "instead of the run's own")
        if name == "resume":
            s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                           help="change where and how often the run reports before it continues (threads, device, "
                                "data_root, download, log_every, eval_every, ckpt_every); what it computes stays")
    pt = _subparser(sub, "pretrain", help="train (or reuse) the preset's source model")
    _add_config_flags(pt)
    pr = _subparser(sub, "presets", help="list presets (or --fields: every config field)")
    pr.add_argument("--fields", action="store_true")
    r = _subparser(sub, "runs", help="list runs and their state")
    r.add_argument("--runs-dir", default=default_runs_dir(), help=RUNS_HELP)
    d = _subparser(sub, "data", help="list datasets, or --download NAME")
    d.add_argument("--download", default=None, metavar="NAME")
    d.add_argument("--data-root", default=default_data_root(),
                   help="datasets and cached source models (default: $DFG_DATA_ROOT, else ./data)")
    _add_sweep_parser(sub)
    return p


def _add_sweep_parser(sub) -> None:
    s = _subparser(sub, "sweep", help="run a grid (presets x methods x seeds x majority sets x --set values) "
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
