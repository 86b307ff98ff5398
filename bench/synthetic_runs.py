"""Synthetic run folders of any size, for tests/test_app_scale.py and bench/app_scale.py: written with the run
store's own writers (Run.create, append_metrics, save_filter_weights, set_status, write_json) and the library's
scores and attention, so the app reads them exactly as it reads a real run's; seeded, and quick at 200k rows."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from dfg.filter_weights import attention
from dfg.metrics import scores
from dfg.runstore import Run

DFG_LOSSES = ("L_D", "L_G", "L_E", "L_rC", "L_gC", "L_cC", "GP", "W_dist", "L_cC_G")  # what a DFG train row holds
CLASSES, FILTERS = 10, 6  # the demo preset: MNIST's 10 classes, LeNet's 6 filters in E's last conv
MINORITY = tuple(range(2, CLASSES))  # demo: 2 majority classes, the rest are minority
CHUNK = 20_000  # rows per append_metrics call: one call of 200k rows held ~200 MB of row dicts


def long_metrics(run: Run, n: int, spike_at: int | None = None, eval_every: int = 1000,
                 keys=("L_D", "L_G"), eval_fields=None) -> list[float]:
    """Replace the run's metrics.jsonl by n train rows, steps 1..n (L_D a slow wave with a spike of 100 at
    `spike_at`, the other `keys` slow ramps), and a test evaluation after every `eval_every`-th (top1 = step/n,
    plus eval_fields(step) when given). Returns the L_D values."""
    ld = [math.sin(s / 500) + (100.0 if s == spike_at else 0.0) for s in range(1, n + 1)]
    (run.path / "metrics.jsonl").write_bytes(b"")
    t0 = time.time() - n
    for lo in range(1, n + 1, CHUNK):
        rows = []
        for s in range(lo, min(n, lo + CHUNK - 1) + 1):
            rows.append({"kind": "train", "step": s, "time": t0 + s, "steps_per_s": 6.5,
                         **{k: ld[s - 1] if k == "L_D" else 1.0 + i + s / n for i, k in enumerate(keys)}})
            if s % eval_every == 0:
                rows.append({"kind": "eval", "split": "test", "step": s, "time": t0 + s, "top1": s / n,
                             **(eval_fields(s) if eval_fields else {})})
        run.append_metrics(rows)
    return ld


def eval_fields(rng: np.random.Generator):
    """A test evaluation's measured fields (confusion matrix and dfg.metrics.scores of it) for a random
    demo-sized matrix, as long_metrics' eval_fields."""
    def fields(step: int) -> dict:
        cm = rng.integers(0, 20, (CLASSES, CLASSES)) + np.diag(rng.integers(50, 500, CLASSES))
        return {**scores(cm, MINORITY), "confusion": cm.tolist(), "n": int(cm.sum())}
    return fields


def weight_steps(run: Run, steps, rng: np.random.Generator, rho: float = 0.75, delta: float = 0.95) -> None:
    """A filter-weight file per step: one W(E_S), a W(E) that wanders around it, and W* from both (Eq. 7 and
    the δ threshold), class × filter, float32 as a training run stores them."""
    w_source = rng.dirichlet(np.ones(FILTERS), CLASSES).astype(np.float32) * FILTERS  # rows average 1
    for s in steps:
        w_target = (w_source * rng.uniform(0.7, 1.3, w_source.shape)).astype(np.float32)
        w_star = attention(torch.from_numpy(w_source), torch.from_numpy(w_target), rho=rho, delta=delta).numpy()
        run.save_filter_weights(s, w_source=w_source, w_target=w_target, w_star=w_star)


def data_record(rng: np.random.Generator) -> dict:
    """data.json as a demo run writes it (10:1 step imbalance, two majority classes)."""
    counts = [{"class": k, "name": str(k), "available": 500, "kept": 500 if k not in MINORITY else 50, "val": 0,
               "test": int(rng.integers(900, 1100))} for k in range(CLASSES)]
    return {"class_counts": counts, "class_names": [str(k) for k in range(CLASSES)], "majority": [0, 1],
            "minority": list(MINORITY), "warnings": [], "num_classes": CLASSES}


def synthetic_run(root: Path, run_id: str, config: dict, *, state: str, created: float, rows: int, weights: int,
                  rng: np.random.Generator) -> Run:
    """One run folder: `rows` train rows with evaluations, `weights` filter-weight recomputes (DFG runs only,
    every n_w steps from 0), the status `state` and, for a finished run, final.json with its last evaluation."""
    run = Run.create(root, run_id, config)
    run.write_json("data.json", data_record(rng))
    every = min(1000, max(1, rows // 2))
    long_metrics(run, rows, eval_every=every, keys=DFG_LOSSES, eval_fields=eval_fields(rng))
    if config["method"] == "dfg":
        weight_steps(run, range(0, weights * config["n_w"], config["n_w"]), rng, config["rho"], config["delta"])
    newest = run.newest_eval()
    if state == "finished" and newest:
        run.write_json("final.json", {"last": newest, "best_on_val": None})
    run.set_status(state=state, step=rows, total_steps=max(rows, config["steps"]), created=created,
                   **({"top1": newest["top1"]} if state == "finished" and newest else {}),
                   **({"error": "RuntimeError: synthetic failure"} if state == "failed" else {}))
    return run


def runs_folder(root: Path, *, rows: int, weights: int, runs: int, seed: int = 0) -> Run:
    """A runs folder of `runs` runs: the newest (selected by the app's sidebar) is "big", a stopped DFG run with
    `rows` metric rows and `weights` weight recomputes; the others are demo-sized (70 rows, 8 recomputes), of
    four methods, DFG at several ρ, mostly finished, every 25th stopped and every 40th failed. Returns the big run."""
    from dfg.config import make_config  # imports the method registry: only when a folder is built

    rng, now = np.random.default_rng(seed), time.time()
    configs = {m: make_config("demo", {"method": m}).to_dict() for m in ("dfg", "original", "finetune", "delta")}
    big_config = {**configs["dfg"], "steps": rows, "n_w": max(1, rows // max(1, weights))}
    big = synthetic_run(root, "big", big_config, state="stopped", created=now, rows=rows, weights=weights, rng=rng)
    for i in range(1, runs):
        method = ("dfg", "dfg", "original", "finetune", "delta")[i % 5]
        config = {**configs[method], "seed": i % 3}
        if method == "dfg":  # several ρ: the Filter weights page's Figure 6 compares them
            config["rho"] = (0.0, 0.25, 0.5, 0.75, 1.0)[i // 5 % 5]
        state = "stopped" if i % 25 == 0 else "failed" if i % 40 == 0 else "finished"
        synthetic_run(root, f"run{i:04d}", config, state=state, created=now - 60 * i, rows=70, weights=8, rng=rng)
    return big
