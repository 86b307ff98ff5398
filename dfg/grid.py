"""Sweep grids: --presets × --methods × --seeds × majority sets × multi-valued --set values parsed into
canonical texts and expanded into cells with deterministic run ids, every config validated first."""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field

from .config import BOOKKEEPING, ConfigError, absolute_path, make_config, parse_value
from .presets import PRESETS
from .runstore import RUN_ID, check_run_id
from .tables import value_text

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
    legacy_id: str | None = None  # its id before BOOKKEEPING keys left the hash, when that differs

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
    return value_text(parse_value(key, text))


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
    if cfg.imbalance != "step":
        return [None]  # balanced or long-tailed data: no majority classes to choose
    n = DATASETS[cfg.dataset].num_classes
    if not n:
        raise ConfigError(f"--majority-combos needs a dataset with known classes; {cfg.dataset!r} has none")
    if combos == "all":
        return list(majority_combinations(n, cfg.num_majority))
    total = math.comb(n, cfg.num_majority)
    if 1 <= cfg.num_majority < n and int(combos) > total:  # an impossible k gets majority_combinations' message
        raise ConfigError(f"--majority-combos {combos} asks for more sets than preset {preset!r} has: "
                          f"C({n}, {cfg.num_majority}) = {total} ways to choose {cfg.num_majority} majority classes "
                          f"of {n}; give at most {total}, or all")
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
        raise ConfigError(f"--name {name!r} is invalid: use letters, digits, '.', '_' and '-', starting with a "
                          "letter or digit")
    _check_combos(majority_combos)
    sets = sets or {}
    keys = sorted(sets)
    for k in keys:
        if k in BOOKKEEPING and len(set(sets[k])) > 1:
            raise ConfigError(f"--set {k}={','.join(sets[k])}: {k} says where a run reads or reports or how many "
                              "threads it takes, not what it computes, so it is no axis of a sweep: give one value")
    cells, ids = [], set()
    for preset, values in itertools.product(presets, itertools.product(*(sets[k] for k in keys))):
        these = dict(zip(keys, values))
        # over canonical texts (parse_sets): one id per value, however spelt; without the BOOKKEEPING keys, so
        # a re-launch from another folder (data_root) or with another log_every or threads finds its runs
        experiment = {k: v for k, v in these.items() if k not in BOOKKEEPING}
        tag, legacy_tag = _short_hash(experiment), _short_hash(these)
        for majority in _majority_sets(preset, these, majority_combos):
            for method, seed in itertools.product(methods, seeds):
                maj = ".".join(map(str, majority)) if majority is not None else "auto"
                run_id = f"sw-{name}-{preset}-{method}-s{seed}-m{maj}-{tag}"
                try:
                    check_run_id(run_id)
                except ValueError as e:
                    raise ConfigError(f"{e} (shorten --name)") from None
                legacy = run_id[: -len(tag)] + legacy_tag if legacy_tag != tag else None
                cell = Cell(run_id, preset, method, seed, majority, these, legacy)
                cell.config()  # validate now: a bad value fails before the first run starts
                if run_id not in ids:
                    ids.add(run_id)
                    cells.append(cell)
    return cells


def varied(sets: dict[str, list[str]]) -> list[str]:
    return sorted(k for k, v in sets.items() if len(set(v)) > 1)
