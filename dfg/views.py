"""What the app's pages call (no streamlit here): where runs live, the device, the run list, starting /
stopping / resuming background runs, progress text, and the Train form's defaults and error mapping.
Page-specific helpers live in dfg/views_*.py."""
from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

from .config import (DATA_ROOT_ENV, FIELD_TYPES, RUNS_DIR_ENV, Config, ConfigError,  # noqa: F401
                     absolute_path, default_data_root, default_runs_dir, make_config, with_absolute_data_root)
from .presets import PRESETS
from .jobs import starting_worker
from .runstore import ACTIVE, Run, RunError, list_runs, readable_runs

DEMO_OVERRIDES_ENV = "DFG_DEMO_OVERRIDES"  # "k=v,k=v" applied to the Start page's demo run (tests: fewer steps)
RESUMABLE = ("stopped", "interrupted", "failed")


def device_info() -> dict:
    """{"cuda": bool, "label": text for the sidebar, "choices": devices a run may use (cuda first)}."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return {"cuda": True, "label": f"CUDA: {name} ({torch.cuda.device_count()} GPU)", "choices": ["cuda", "cpu"]}
    return {"cuda": False, "label": f"CPU ({os.cpu_count()} cores; no CUDA device)", "choices": ["cpu"]}


# -- the run list ---------------------------------------------------------------------------------
def runs_folder(text: str | None) -> str:
    """The sidebar's runs folder as an absolute path (~ expanded, as a shell would); empty: the default."""
    return absolute_path(text.strip() if text and text.strip() else default_runs_dir())


def run_ids(root: str | Path) -> list[str]:
    return [r.id for r in list_runs(root)]


def run_label(run: Run) -> str:
    """'<id> · running 40/1500' — how the sidebar lists a run."""
    s = run.status()
    try:
        total = s.get("total_steps") or run.config().get("steps", "?")
    except RunError:
        return f"{run.id} · damaged config.json"
    return f"{run.id} · {s.get('state', '?')} {s.get('step', 0)}/{total}"


def progress(run: Run) -> dict:
    """Progress of a run for a bar: fraction in [0, 1], one line of text, state, error, active flag."""
    if not run.exists():
        return {"fraction": 0.0, "text": "its folder is gone (deleted or moved)", "state": "missing",
                "error": None, "active": False, "resumable": False}
    s = run.status()
    state, step = s.get("state", "unknown"), int(s.get("step") or 0)
    try:
        total = int(s.get("total_steps") or run.config().get("steps") or 1)
    except (RunError, TypeError, ValueError):  # a damaged config.json
        total = 1
    rate = s.get("steps_per_s") or 0.0
    relaunched = state in RESUMABLE and bool(starting_worker(run, s))  # Resume pressed, worker not yet reporting
    if state == "created" or relaunched:
        text = "waiting for its worker process to start"
    elif state == "running" and step == 0:
        text = "preparing data, source model and filter weights..."
    elif state == "running":
        eta = (total - step) / rate if rate > 0 else float("inf")
        text = f"step {step}/{total} · {rate:.2f} steps/s · ETA {format_seconds(eta)}"
    else:
        text = f"{state} at step {step}/{total}"
        if state == "finished" and s.get("top1") is not None:
            text += f" · test top-1 {s['top1']:.2%}"
    return {"fraction": min(1.0, step / max(total, 1)), "text": text, "state": state,
            "error": s.get("error") if state in ("failed", "diverged", "interrupted") else None,
            "active": state in ACTIVE or relaunched, "resumable": state in RESUMABLE and not relaunched}


def listed_runs(runs: list[Run], limit: int = 12) -> tuple[list[tuple[Run, dict]], int]:
    """The Train page's list: (run, progress) of every active and every resumable run (they have a Stop or
    Resume button), then the newest others up to `limit` rows in all, in the given (newest first) order; and
    how many others are left out."""
    rows = [(run, progress(run)) for run in runs]
    busy = [p["active"] or p["resumable"] for _, p in rows]
    left_out = set([i for i, b in enumerate(busy) if not b][max(0, limit - sum(busy)):])
    return [r for i, r in enumerate(rows) if i not in left_out], len(left_out)


def format_seconds(sec: float) -> str:
    if sec != sec or sec == float("inf"):
        return "?"
    sec = int(round(sec))
    return f"{sec // 3600}h{sec % 3600 // 60:02d}m" if sec >= 3600 else f"{sec // 60}m{sec % 60:02d}s"


# -- starting, stopping, resuming -----------------------------------------------------------------
def start_run(cfg: Config, root: str | Path, run_id: str | None = None) -> Run:
    """Check the config and its data (dfg.jobs.submit: nothing is created when that fails), create the run
    folder and launch its background worker. threads=0 while another run trains becomes 1: several torch
    processes on few cores with default threading run ~20x slower."""
    from .jobs import submit

    if cfg.threads == 0 and any(r.status().get("state") in ACTIVE for r in list_runs(root)):
        cfg = replace(cfg, threads=1)
    cfg = with_absolute_data_root(cfg)  # a relative root would be looked up from wherever eval or resume runs
    return submit(cfg, root, run_id)


def all_core_runs(root: str | Path) -> list[str]:
    """Ids of active runs that train on every core (threads=0): a run started beside one of them slows it down
    sharply (on 2 cores the first run fell from ~6.7 to ~0.3 steps/s while a second trained on 1 thread)."""
    return [run.id for run in readable_runs(list_runs(root))[0]
            if run.config().get("threads") == 0 and progress(run)["active"]]


def parse_overrides(text: str) -> dict[str, str]:
    """'steps=60, pretrain_steps=50' -> {"steps": "60", ...}; a piece without '=' is a ConfigError."""
    out = {}
    for piece in re.split(r"[,\n]", text or ""):
        if piece.strip():
            if "=" not in piece:
                raise ConfigError(f"override {piece.strip()!r}: expected KEY=VALUE, e.g. steps=60")
            k, v = piece.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def demo_overrides() -> dict[str, str]:
    """DFG_DEMO_OVERRIDES as a dict, e.g. "steps=60,pretrain_steps=50" (the browser test's short demo)."""
    return parse_overrides(os.environ.get(DEMO_OVERRIDES_ENV, ""))


def demo_config(data_root: str) -> Config:
    """The demo preset with the data root and DFG_DEMO_OVERRIDES (if set) applied."""
    return make_config("demo", {"data_root": data_root, **demo_overrides()})


def start_demo(root: str | Path, data_root: str) -> Run:
    return start_run(demo_config(data_root), root)


def stop_run(run: Run) -> None:
    from .jobs import stop
    stop(run)


def resume_run(run: Run) -> int:
    """Launch the worker again; it continues from the run's checkpoint (or starts over without one).
    dfg.jobs refuses a run that is still live (RunBusyError)."""
    from .jobs import launch
    return launch(run)


# -- the Train form -------------------------------------------------------------------------------
def form_defaults(preset: str, method: str) -> dict:
    """The preset's values with the method's own learning rates etc. (dfg.methods.METHOD_DEFAULTS)."""
    from .methods import METHOD_DEFAULTS

    vals = PRESETS[preset].to_dict()
    family = "sgd" if vals["optimizer_ec"] == "sgd" else "adam"
    vals.update(METHOD_DEFAULTS.get(method, {}).get(family, {}))
    vals["method"] = method
    return vals


def field_of_error(err: Exception) -> str:
    """The config field a ConfigError names ('rho=1.5 is invalid: ...' -> 'rho'); the sum rule of Eq. 4
    maps to gamma, the Adam betas to adam_beta1; '' when no field can be read from the message."""
    msg = str(err)
    m = re.match(r"^(?:unknown config field |override )?'?([A-Za-z_][A-Za-z0-9_+]*)'?", msg)
    name = m.group(1) if m else ""
    name = {"alpha+beta+gamma": "gamma", "adam_betas": "adam_beta1"}.get(name, name)
    return name if name in FIELD_TYPES else ""


def form_notes(cfg: Config, values: dict, defaults: dict) -> list[str]:
    """validation.unused_fields for the form's values moved from their defaults (the form sends every field)."""
    from .validation import unused_fields
    return unused_fields(cfg, [k for k, v in values.items() if k in defaults and str(v) != str(defaults[k])])


def build_config(preset: str, values: dict) -> tuple[Config | None, str, str]:
    """(config, "", "") when the form's values are valid, else (None, field, message)."""
    values = {k: v for k, v in values.items() if k != "preset"}
    if str(values.get("majority") or "").strip():  # the form always sends a count: given classes decide it
        values.pop("num_majority", None)
    try:
        return make_config(preset, values), "", ""
    except ConfigError as e:
        return None, field_of_error(e), str(e)
