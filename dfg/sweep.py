"""Multi-run sweeps: expand presets × methods × seeds × majority sets × multi-valued --set values into
deterministic run ids, run the missing ones (local or Ray), and tabulate into <runs>/sweeps/<name>/."""
from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError, absolute_path, make_config, parse_value
from .presets import PRESETS
from .runstore import RUN_ID, Run, atomic_write_json, check_run_id
from .tables import rho_curve, run_row, summarise, write_tables

GRID_KEYS = {"preset": "--presets", "method": "--methods", "seed": "--seeds",  # set by the grid, not --set
             "majority": "--majority-combos"}
PATH_KEYS = ("data_root", "folder")                     # made absolute: workers may start elsewhere


@dataclass(frozen=True)
class Cell:
    """One run of the grid: where it comes from, and the overrides that make its config."""
    run_id: str
    preset: str
    method: str
    seed: int
    majority: tuple[int, ...] | None        # None: the config's own seeded draw (or a balanced dataset)
    sets: dict = field(default_factory=dict)  # --set values of this cell (canonical text), fixed and varied

    def overrides(self, threads: int = 0) -> dict:
        o = {**self.sets, "method": self.method, "seed": self.seed}
        for k in PATH_KEYS:
            if o.get(k) or k == "data_root":
                o[k] = absolute_path(o.get(k) or PRESETS[self.preset].data_root)
        if self.majority is not None:
            o["majority"] = self.majority
        if threads and "threads" not in self.sets:
            o["threads"] = threads
        return o

    def config(self, threads: int = 0):
        return make_config(self.preset, self.overrides(threads))


def split_commas(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']: a comma-separated list (--presets, --methods, a --set value)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def canonical(key: str, text: str) -> str:
    """A --set value as the one text its parsed value gets, so that 0.5 and 0.50, or 1000 and 1e3, are one
    cell and one run id. Ordinary spellings are their own canonical text (0, 0.5, 1, 1e-5, 2e-4, 1000, true),
    which keeps the ids of sweeps made before values were parsed: a whole float is written as an integer,
    another as the shorter of its repr and scientific forms (0.75, 1e-4); text fields stay as given."""
    v = parse_value(key, text)
    if isinstance(v, bool):
        return "true" if v else "false"
    if not isinstance(v, float):
        return str(v)
    if v.is_integer() and abs(v) < 1e16:
        return str(int(v))

    def tidy(t: str) -> str:  # 1e-05 -> 1e-5, 1e+20 -> 1e20 (nan and inf have no exponent)
        return f"{t.split('e')[0]}e{int(t.split('e')[1])}" if "e" in t and t[-1].isdigit() else t

    sci = [tidy(f"{v:.{p}e}") for p in range(17) if float(f"{v:.{p}e}") == v][:1]  # the fewest digits
    return min([tidy(repr(v))] + sci, key=len)  # a tie keeps repr's 0.01


def parse_sets(items: list[str], log=None) -> dict[str, list[str]]:
    """['rho=0,0.50', 'steps=1e2'] -> {'rho': ['0', '0.5'], 'steps': ['100']}: commas give several values,
    each in its canonical text; a value equal to an earlier one of its key is dropped (with a note to
    `log`), as it would only run the same cells again and pool them as extra samples."""
    out: dict[str, list[str]] = {}
    first: dict[tuple[str, str], str] = {}  # (key, canonical text) -> how it was first spelt, for the note
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE or KEY=V1,V2,..., e.g. --set rho=0,0.5,1")
        k, v = (t.strip() for t in item.split("=", 1))
        if k in GRID_KEYS:
            raise ConfigError(f"--set {k}=... is set by the sweep grid: use {GRID_KEYS[k]} instead")
        values = out.setdefault(k, [])
        for text in split_commas(v) or [""]:
            value = canonical(k, text)  # a bad value or an unknown key stops here, with make_config's message
            if (k, value) in first:
                if log:
                    log(f"note: {k}={text} repeats {k}={first[k, value]}; the duplicate is dropped")
            else:
                first[k, value] = text
                values.append(value)
    return out


def parse_seeds(text: str | int) -> list[int]:
    """'10' -> seeds 0..9; '0,3,7' -> those seeds (expand_grid refuses an empty or negative list)."""
    try:
        return [int(t) for t in str(text).split(",") if t.strip()] if "," in str(text) else list(range(int(text)))
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: give a count (10 = seeds 0..9) or a list (0,3,7)") from None


def _short_hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:6]


def _majority_sets(preset: str, sets: dict, combos: str | None) -> list[tuple[int, ...] | None]:
    """[None] (the config's own draw) without --majority-combos; else all C(n, k) or a seeded sample."""
    if combos is None:
        return [None]
    from .data import DATASETS, majority_combinations

    cfg = make_config(preset, sets)
    if cfg.imbalance == "none":
        return [None]  # a balanced dataset has no majority classes to choose
    n = DATASETS[cfg.dataset].num_classes
    if not n:
        raise ConfigError(f"--majority-combos needs a dataset with known classes; {cfg.dataset!r} has none")
    if combos == "all":
        return list(majority_combinations(n, cfg.num_majority))
    return list(majority_combinations(n, cfg.num_majority, sample=int(combos), seed=0))  # same for every seed


def _check_combos(combos: str | None) -> None:
    """--majority-combos is 'all' or a whole number >= 1; checked for every preset (balanced ones ignore it)."""
    if combos in (None, "all"):
        return
    try:
        k = int(combos)
    except ValueError:
        k = 0
    if k < 1:
        raise ConfigError(f"--majority-combos {combos!r} is invalid: give 'all' or a whole number >= 1 "
                          "(the number of majority sets sampled)")


def expand_grid(name: str, presets: list[str], methods: list[str], seeds: list[int], *,
                majority_combos: str | None = None, sets: dict[str, list[str]] | None = None) -> list[Cell]:
    """Every cell of the grid, in order, with its run id; every config is validated before any work.
    `sets`: parse_sets's canonical texts (the run ids hash them)."""
    from .methods import METHODS  # lazy: methods import torch

    for flag, items, valid in (("--presets", presets, sorted(PRESETS)), ("--methods", methods, sorted(METHODS))):
        if not items:
            raise ConfigError(f"{flag} is empty: give one or more of {', '.join(valid)} (comma-separated)")
        unknown = [x for x in items if x not in valid]
        if unknown:
            what = f"{flag[2:-1]}{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}"
            raise ConfigError(f"{flag}: unknown {what}; choose from {', '.join(valid)}")
    if not seeds:  # e.g. --seeds 0 or --seeds ,: a sweep that would only rewrite its tables as empty ones
        raise ConfigError("--seeds gives no seeds: give a count >= 1 (10 = seeds 0..9) or a list (0,3,7)")
    if not RUN_ID.match(name or ""):
        raise ConfigError(f"--name {name!r} is invalid: use letters, digits, '.', '_' and '-'")
    _check_combos(majority_combos)
    sets = sets or {}
    keys = sorted(sets)
    cells, ids = [], set()
    for preset, values in itertools.product(presets, itertools.product(*(sets[k] for k in keys))):
        these = dict(zip(keys, values))
        tag = _short_hash(these)  # over canonical texts (parse_sets): one id per value, however spelt
        for majority in _majority_sets(preset, these, majority_combos):
            for method, seed in itertools.product(methods, seeds):
                maj = ".".join(map(str, majority)) if majority is not None else "auto"
                run_id = f"sw-{name}-{preset}-{method}-s{seed}-m{maj}-{tag}"
                try:
                    check_run_id(run_id)
                except ValueError as e:
                    raise ConfigError(f"{e} (shorten --name)") from None
                cell = Cell(run_id, preset, method, seed, majority, these)
                cell.config()  # validate now: a bad value fails before the first run starts
                if run_id not in ids:
                    ids.add(run_id)
                    cells.append(cell)
    return cells


def varied(sets: dict[str, list[str]]) -> list[str]:
    return sorted(k for k, v in sets.items() if len(set(v)) > 1)


def _grid_json(name, cells: list[Cell], args: dict, by: list[str]) -> dict:
    """grid.json: the arguments, the varied keys and every cell (with its parsed varied values)."""
    out = []
    for c in cells:
        cfg = c.config()
        out.append({"run_id": c.run_id, "preset": c.preset, "dataset": cfg.dataset, "method": c.method,
                    "seed": c.seed, "majority": list(c.majority) if c.majority is not None else None,
                    "sets": c.sets, "values": {k: getattr(cfg, k) for k in by}})
    return {"name": name, "created": time.time(), "args": args, "varied": by, "cells": out}


def sweep_rows(runs_dir: str | Path, grid: dict) -> list[dict]:
    """Per-run rows for every cell: `run_row` for runs that exist, a 'pending' row for the others."""
    rows = []
    for c in grid["cells"]:
        run = Run(runs_dir, c["run_id"])
        if run.exists():
            rows.append(run_row(run, grid["varied"]))
        else:
            rows.append({"run_id": c["run_id"], "preset": c["preset"], "dataset": c["dataset"],
                         "method": c["method"], "seed": c["seed"], "majority": " ".join(map(str, c["majority"] or [])),
                         **c["values"], "state": "pending"})
    return rows


def run_sweep(runs_dir: str | Path, presets: list[str], methods: list[str], seeds: list[int], *,
              name: str | None = None, majority_combos: str | None = None, num_majority: int | None = None,
              sets: list[str] = (), executor: str = "local", address: str | None = None,
              parallel: int | None = None, log=print) -> dict:
    """Expand, run what is not done yet (finished runs are skipped, others resumed), write the tables."""
    from .executors import DONE, action_for, make_executor, preflight_all, reporter
    from .jobs import check_runs_folder

    if parallel is not None and parallel < 1:
        raise ConfigError(f"--parallel must be >= 1 (got {parallel}): the number of runs at a time on CPU; "
                          "leave it out for 1")
    name = name or "-".join(presets)
    parsed = parse_sets(list(sets) + ([f"num_majority={num_majority}"] if num_majority is not None else []), log)
    if len(parsed.get("num_majority", [])) > 1 and num_majority is not None:
        raise ConfigError("give the number of majority classes once: --num-majority or --set num_majority")
    cells = expand_grid(name, presets, methods, seeds, majority_combos=majority_combos, sets=parsed)
    by, out = varied(parsed), Path(runs_dir) / "sweeps" / name
    args = {"presets": presets, "methods": methods, "seeds": seeds, "majority_combos": majority_combos,
            "sets": parsed}
    actions = {c.run_id: action_for(Run(runs_dir, c.run_id)) for c in cells}
    todo = [c for c in cells if actions[c.run_id] in ("new", "resume")]
    # every check before the sweep's folder is touched: a re-launch with a bad argument keeps its grid.json
    grid = _grid_json(name, cells, args, by)
    check_runs_folder(runs_dir)  # the tables are written even when every run is done
    ex = None
    if todo:
        preflight_all([(c.run_id, c.config()) for c in todo], log)
        ex = make_executor(executor, address, parallel)
    try:
        old = _read_json(out / "grid.json")
        if old and old.get("args") != args:
            log(f"note: sweep {name!r} existed with another grid; its tables now follow this one")
        out.mkdir(parents=True, exist_ok=True)
        grid["created"] = (old or {}).get("created", grid["created"])  # a re-launch keeps the sweep's age
        atomic_write_json(out / "grid.json", grid)
    except BaseException:
        if ex is not None:
            ex.close()
        raise
    count = {a: sum(v == a for v in actions.values()) for a in ("new", "resume", "skip", "busy")}
    log(f"sweep {name}: {len(cells)} runs: {count['skip']} done (skipped), {count['busy']} running elsewhere, "
        f"{count['new']} new, {count['resume']} to resume")
    results = []
    if ex is not None:
        try:
            log(ex.describe())
            runs = [_prepare(runs_dir, c, ex.threads, actions[c.run_id], log) for c in todo]
            results = ex.run(runs, reporter(len(todo), log))
        except KeyboardInterrupt:
            write_tables(out, sweep_rows(runs_dir, grid), by)
            log(f"sweep {name} interrupted: its running runs were asked to checkpoint and stop; "
                "run the same command again to resume them")
            raise
        finally:
            ex.close()
    files = write_tables(out, sweep_rows(runs_dir, grid), by)
    ok = sum(r["state"] == "finished" for r in results)
    bad = [r for r in results if r["state"] not in DONE]
    log(f"sweep {name}: ran {len(results)} ({ok} finished, {len(results) - ok - len(bad)} diverged, "
        f"{len(bad)} failed/stopped), skipped {count['skip']} done, {count['busy']} running elsewhere; "
        f"tables in {out}")
    return {"name": name, "dir": out, "cells": len(cells), "ran": len(results), "finished": ok, "failed": len(bad),
            "skipped": count["skip"], "busy": count["busy"], "results": results, "files": files}


def _prepare(runs_dir, cell: Cell, threads: int, action: str, log) -> Run:
    """Create a new cell's run folder (config with the executor's thread count), or reuse the old one."""
    cfg = cell.config(threads).to_dict()
    if action == "new":
        return Run.create(runs_dir, cell.run_id, cfg)
    run = Run(runs_dir, cell.run_id)
    old = run.config()
    diff = sorted(k for k in cfg if k != "threads" and json.dumps(old.get(k)) != json.dumps(cfg[k]))
    if diff:
        log(f"note: {run.id} was created with other values of {', '.join(diff)}; resuming it as it was")
    return run


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def load_sweep(runs_dir: str | Path, name: str) -> dict:
    """A sweep as plain data, read live from its run folders: grid, per-run rows, summary rows (mean/std
    per group, in %, with the paper's value) and the ρ curve when ρ varies."""
    out = Path(runs_dir) / "sweeps" / name
    grid = _read_json(out / "grid.json")
    if grid is None:
        raise ValueError(f"no sweep {name!r} in {Path(runs_dir) / 'sweeps'} (expected {out / 'grid.json'}); "
                         "start one with `python -m dfg sweep --presets ... --name NAME`")
    rows = sweep_rows(runs_dir, grid)
    by = grid["varied"]
    return {"name": name, "dir": str(out), "grid": grid, "varied": by, "runs": rows,
            "summary": summarise([], by, rows=rows), "rho_curve": rho_curve(rows, by) if "rho" in by else None}


def list_sweeps(runs_dir: str | Path) -> list[dict]:
    """Every sweep under <runs_dir>/sweeps, newest first: name, created, cells, finished, dir."""
    root = Path(runs_dir) / "sweeps"
    out = []
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        grid = _read_json(p / "grid.json")
        if not grid:
            continue
        done = sum(Run(runs_dir, c["run_id"]).raw_status().get("state") == "finished" for c in grid["cells"]
                   if (Path(runs_dir) / c["run_id"]).is_dir())
        out.append({"name": grid["name"], "created": grid["created"], "cells": len(grid["cells"]),
                    "finished": done, "varied": grid["varied"], "dir": str(p)})
    return sorted(out, key=lambda d: d["created"], reverse=True)
