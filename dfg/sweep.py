"""Multi-run sweeps: run a grid's missing runs (local or Ray; dfg.grid expands the grid into deterministic
run ids) and tabulate them into <runs>/sweeps/<name>/."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from .config import BOOKKEEPING, ConfigError, from_dict
from .fileio import atomic_write_json
from .grid import Cell, expand_grid, parse_sets, varied
from .runstore import Run, RunError
from .tables import rho_curve, run_row, summarise, write_tables


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
    """Per-run rows for every cell: `run_row` for runs that exist, a 'pending' row for the others and a
    'damaged' one (its error names the file) for a run whose config.json cannot be read."""
    rows = []
    for c in grid["cells"]:
        run = Run(runs_dir, c["run_id"])
        cell = {"run_id": c["run_id"], "preset": c["preset"], "dataset": c["dataset"], "method": c["method"],
                "seed": c["seed"], "majority": " ".join(map(str, c["majority"] or [])), **c["values"]}
        if not run.exists():
            rows.append({**cell, "state": "pending"})
            continue
        try:
            rows.append(run_row(run, grid["varied"]))
        except RunError as e:
            rows.append({**cell, "state": "damaged", "error": str(e)})
    return rows


def run_sweep(runs_dir: str | Path, presets: list[str], methods: list[str], seeds: list[int], *,
              name: str | None = None, majority_combos: str | None = None, num_majority: int | None = None,
              sets: list[str] = (), executor: str = "local", address: str | None = None,
              parallel: int | None = None, replace: bool = False, log=print) -> dict:
    """Expand, run what is not done yet (finished runs are skipped, others resumed), write the tables.
    A re-launch may add presets, methods, seeds, majority sets and values of a varied --set key; one that
    changes a fixed --set value is another experiment and is refused unless `replace` (see _changed_fixed)."""
    from .executors import DONE, action_for, make_executor, preflight_all, reporter
    from .jobs import check_runs_folder, sigterm_as_interrupt

    if parallel is not None and parallel < 1:
        raise ConfigError(f"--parallel must be >= 1 (got {parallel}): the number of runs at a time on CPU; "
                          "leave it out for 1")
    name = name or "-".join(presets)
    parsed = parse_sets(list(sets) + ([f"num_majority={num_majority}"] if num_majority is not None else []), log)
    if len(parsed.get("num_majority", [])) > 1 and num_majority is not None:
        raise ConfigError("give the number of majority classes once: --num-majority or --set num_majority")
    cells = [_adopt_legacy(runs_dir, c) for c in
             expand_grid(name, presets, methods, seeds, majority_combos=majority_combos, sets=parsed)]
    by, out = varied(parsed), Path(runs_dir) / "sweeps" / name
    args = {"presets": presets, "methods": methods, "seeds": seeds, "majority_combos": majority_combos,
            "sets": parsed}
    old = _read_json(out / "grid.json")
    changed = _changed_fixed(((old or {}).get("args") or {}).get("sets") or {}, parsed) if old else []
    actions = {c.run_id: action_for(Run(runs_dir, c.run_id)) for c in cells}
    todo = [c for c in cells if actions[c.run_id] in ("new", "resume")]
    for c in cells:
        if actions[c.run_id] == "skip" and (diff := _stored_diff(Run(runs_dir, c.run_id), c)):
            log(f"note: {c.run_id} finished with other values of {', '.join(diff)} than this grid gives it now "
                "(the code's defaults changed?); it is counted as it was: delete its folder to run it anew")
    # every check before the sweep's folder is touched: a re-launch with a bad argument keeps its grid.json
    grid = _grid_json(name, cells, args, by)
    check_runs_folder(runs_dir)  # the tables are written even when every run is done
    ex = make_executor(executor, address, parallel) if todo else None  # its thread count is part of each config
    try:
        if todo:  # the configs the runs will have: the source model's cache entry depends on their threads
            preflight_all([(c.run_id, _launch_config(runs_dir, c, actions[c.run_id], ex.threads)) for c in todo], log)
        if changed and not replace:  # after the checks of the values themselves, before anything is written
            raise ConfigError(f"sweep {name!r} exists with other fixed --set values ({'; '.join(changed)}): that "
                              "is another experiment. Give it another --name, or add --replace to point this "
                              "sweep's tables at the new grid (the old runs stay in the runs folder)")
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
            log(ex.describe() + ("; torch threads per run as --set threads gives them" if "threads" in parsed
                                  else ""))
            runs = [_prepare(runs_dir, c, ex.threads, actions[c.run_id], log) for c in todo]
            with sigterm_as_interrupt():
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
    elsewhere = sum(r["state"] == "running elsewhere" for r in results)  # started meanwhile by the app or a sweep
    count["busy"] += elsewhere
    bad = [r for r in results if r["state"] not in DONE and r["state"] != "running elsewhere"]
    log(f"sweep {name}: ran {len(results)} ({ok} finished, {len(results) - ok - len(bad) - elsewhere} diverged, "
        f"{len(bad)} failed/stopped), skipped {count['skip']} done, {count['busy']} running elsewhere; "
        f"tables in {out}")
    return {"name": name, "dir": out, "cells": len(cells), "ran": len(results), "finished": ok, "failed": len(bad),
            "skipped": count["skip"], "busy": count["busy"], "results": results, "files": files}


# --set keys that change where and how often a run writes, not what it computes
def _changed_fixed(old: dict, new: dict) -> list[str]:
    """'key: old -> new' for each --set key that is fixed (one value) in one grid and absent from, or fixed
    at another value in, the other. More values on an axis extend a sweep; these change its experiment."""
    out = []
    for k in sorted((set(old) | set(new)) - BOOKKEEPING):
        a, b = old.get(k), new.get(k)
        if a is None or b is None:
            if len(a or b) == 1:
                out.append(f"{k}: {a[0] if a else '(default)'} -> {b[0] if b else '(default)'}")
        elif len(a) == len(b) == 1 and a != b:
            out.append(f"{k}: {a[0]} -> {b[0]}")
    return out


def _adopt_legacy(runs_dir, cell: Cell) -> Cell:
    """The cell under the id it had before BOOKKEEPING keys left the run-id hash, when only that run exists:
    sweeps made then resume and skip their own runs instead of training them again under a new id."""
    if cell.legacy_id and not Run(runs_dir, cell.run_id).exists() and Run(runs_dir, cell.legacy_id).exists():
        return dataclasses.replace(cell, run_id=cell.legacy_id)
    return cell


def _prepare(runs_dir, cell: Cell, threads: int, action: str, log) -> Run:
    """Create a new cell's run folder (config with the executor's thread count), or reuse the old one."""
    cfg = cell.config(threads).to_dict()
    if action == "new":
        try:
            return Run.create(runs_dir, cell.run_id, cfg)
        except RunError:
            if not Run(runs_dir, cell.run_id).exists():
                raise
            # the same sweep launched twice at once: the other made it; its worker, when it has one, is found
            # at spawn time and this sweep reports the run as running elsewhere
    run = Run(runs_dir, cell.run_id)
    run.clear_stop()  # left by a sweep killed before its worker stopped: this launch asks the run to go on
    diff = _stored_diff(run, cell)
    if diff:
        log(f"note: {run.id} was created with other values of {', '.join(diff)}; resuming it as it was")
    return run


def _launch_config(runs_dir, cell: Cell, action: str, threads: int):
    """The Config a cell's run will train with: a new one's with the executor's threads, a resumed one's own."""
    if action == "resume":
        try:
            return from_dict(Run(runs_dir, cell.run_id).config())
        except (RunError, ConfigError):
            pass  # named when the run itself starts
    return cell.config(threads)


def _stored_diff(run: Run, cell: Cell) -> list[str]:
    """Config fields whose stored value differs from what the cell asks for today (a preset default changed in
    the code since the run was made, say); the thread count aside. A damaged config.json: [] (named elsewhere)."""
    try:
        old = from_dict(run.config()).to_dict()  # with the defaults of fields added since it was written
    except (RunError, ConfigError):
        return []
    cfg = cell.config().to_dict()
    return sorted(k for k in cfg if k != "threads" and json.dumps(old.get(k)) != json.dumps(cfg[k]))


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
