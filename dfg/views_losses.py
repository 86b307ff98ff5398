"""Live losses page: incremental reading of metrics.jsonl (only new rows each poll), EMA smoothing and the
plotly charts (one per loss, several runs overlaid)."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from .fileio import is_number
from .runlog import is_test_eval
from .runstore import Run

# the paper's losses first (Eq. 1-4), then what some methods add
LOSS_KEYS = ("L_D", "L_G", "L_E", "L_rC", "L_gC", "L_cC", "GP")
EXTRA_KEYS = ("W_dist", "L_C", "L_cC_G", "L_reg")
TITLES = {"L_D": "L_D critic (Eq. 1)", "L_G": "L_G generator (Eq. 2)", "L_E": "L_E extractor (Eq. 3)",
          "L_rC": "L_rC classifier on real (Eq. 4a)", "L_gC": "L_gC classifier on generated (Eq. 4b)",
          "L_cC": "L_cC classifier on real ⊕ generated (Eq. 4c)", "GP": "gradient penalty",
          "W_dist": "Wasserstein estimate", "L_C": "L_C classifier total (Eq. 4)",
          "L_cC_G": "L_cC through G (line 15)", "L_reg": "transfer regulariser",
          "top1": "test accuracy (top-1)"}


MAX_POINTS = 4000  # per curve: more than a chart a few hundred pixels wide can show; 200k made a rerun take 14 s
PLOTTED = LOSS_KEYS + EXTRA_KEYS


def new_tail() -> dict:
    """What a page keeps per run in session state: byte offset into metrics.jsonl and, as columns (numpy
    float arrays, NaN where a row lacks the value or holds a non-number), the train rows' step and losses and
    the test evaluations' step and top1. Columns, not row dicts: 200k rows took 285 MB as dicts."""
    return {"offset": 0, "train": {"step": np.empty(0)}, "eval": {"step": np.empty(0), "top1": np.empty(0)}}


def _append(cols: dict, rows: list[dict], keys) -> None:
    """Append rows to columns; a key first seen now is NaN for the rows before it."""
    n_old = len(cols["step"])
    seen = {k for r in rows for k in r if k in keys}
    nan = float("nan")
    for k in seen | set(cols):
        # JSON numbers come back as exactly int or float (a bool is neither): type() instead of is_number()
        # per value took 200k rows' columns from 1.09 to 0.64 s
        new = np.array([v if type(v) is float or type(v) is int else nan for v in [r.get(k) for r in rows]], float)
        old = cols.get(k, np.full(n_old, np.nan))
        cols[k] = np.concatenate([old, new]) if n_old else new


def update_tail(tail: dict, run: Run) -> int:
    """Read only the rows appended since the last call; returns how many arrived. A file that shrank (a run
    restarted from scratch) or belongs to another run of that id (deleted and made again) is read again
    from the start."""
    size = (run.path / "metrics.jsonl").stat().st_size if (run.path / "metrics.jsonl").exists() else 0
    identity = run.identity()
    if size < tail["offset"] or tail.get("identity", identity) != identity:
        tail.update(new_tail())
    tail["identity"] = identity
    rows, tail["offset"] = run.read_metrics(tail["offset"])
    rows = [r for r in rows if is_number(r.get("step"))]  # a hand-edited row without a step has no place
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if is_test_eval(r)]
    if train:
        _append(tail["train"], train, ("step",) + PLOTTED)
    if evals:
        _append(tail["eval"], evals, ("step", "top1"))
    return len(rows)


def evict(tails: dict, keep: set) -> None:
    """Drop the tails of runs no longer shown (session state would otherwise hold every run ever viewed)."""
    for k in [k for k in tails if k not in keep]:
        del tails[k]


def ema(values, smoothing: float, block: int = 64) -> np.ndarray:
    """Exponential moving average s_t = a·s_{t-1} + (1−a)·x_t with debiasing (as TensorBoard), a in [0, 1):
    s_t / (1 − a^t). Always over every row, before thin(): smoothing the thinned curve would smooth its extremes.
    Vectorised by blocks (a Python loop took ~0.15 s per 200k-row curve, a dozen curves per rerun): within a
    block, a matrix of powers of a; across blocks, the state carried forward one block at a time."""
    x = np.asarray(values, dtype=float)
    n, a = len(x), float(smoothing)
    if n == 0 or a <= 0:
        return x.copy()
    pad = -n % block
    xb = np.concatenate([x, np.zeros(pad)]).reshape(-1, block)
    i = np.arange(block)
    lag = i[:, None] - i[None, :]
    kernel = np.where(lag >= 0, (1 - a) * a ** np.maximum(lag, 0), 0.0)  # kernel[i, j]: weight of x_j in s_i
    inner = xb @ kernel.T  # each block as if it started from s = 0
    carry, carries, a_block = 0.0, [], a ** block
    for last in inner[:, -1].tolist():  # the state before each block: s at the end of the one before
        carries.append(carry)
        carry = a_block * carry + last
    s = (inner + np.outer(carries, a ** (i + 1))).ravel()[:n]  # a^(i+1): what that state still weighs
    return s / -np.expm1(np.arange(1, n + 1) * np.log(a))  # 1 − a^t; exp is ~10x faster than a float power


def thin(x: np.ndarray, y: np.ndarray, limit: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ~limit points of the curve (x ascending): the lowest and the highest value in each of
    limit/2 equal step buckets, in step order, so a spike or a dip stays on the chart (a mean or every k-th row
    would hide it); the first and the last point are always kept."""
    n = len(x)
    if n <= limit:
        return x, y
    buckets = max(1, limit // 2)
    span = float(x[-1] - x[0]) or 1.0
    b = np.minimum(((x - x[0]) * (buckets / span)).astype(np.int64), buckets - 1)  # equal step ranges
    starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])  # x ascending: each bucket is one run of rows
    of = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    keep = [[0, n - 1]]
    for extreme in (np.minimum, np.maximum):
        hit = np.flatnonzero(y == extreme.reduceat(y, starts)[of])
        keep.append(hit[np.r_[True, of[hit][1:] != of[hit][:-1]]])  # the first such row of each bucket
    keep = np.unique(np.concatenate(keep))
    return x[keep], y[keep]


def present_keys(tails: dict[str, dict]) -> list[str]:
    """Loss keys that occur in any run, paper losses first."""
    seen = {k for t in tails.values() for k in t["train"]}
    return [k for k in PLOTTED if k in seen]


def thinned(tails: dict[str, dict], limit: int = MAX_POINTS) -> dict[str, int]:
    """{run_id: train rows} of the runs whose curves thin() shortens (for the page's caption)."""
    return {rid: len(t["train"]["step"]) for rid, t in tails.items() if len(t["train"]["step"]) > limit}


def metric_figure(tails: dict[str, dict], key: str, *, smoothing: float = 0.0, log_y: bool = False,
                  limit: int = MAX_POINTS) -> go.Figure:
    """One chart: `key` against step for every run in `tails` ({run_id: tail}); raw values faint under the
    EMA when smoothing > 0. Log scale is applied only when every value is positive (L_D is negative).
    Each curve is thin()ned to ~limit points; the EMA is computed on every row first."""
    fig = go.Figure()
    all_positive = True
    source = "eval" if key == "top1" else "train"
    for i, (rid, tail) in enumerate(tails.items()):
        cols = tail[source]
        if key not in cols:
            continue
        ok = np.isfinite(cols[key])  # a hand-edited "x" is left out, not a crash
        if not ok.any():
            continue
        x, y = cols["step"][ok], cols[key][ok]
        if np.any(np.diff(x) < 0):
            order = np.argsort(x, kind="stable")
            x, y = x[order], y[order]
        all_positive &= bool(y.min() > 0)
        color = PALETTE[i % len(PALETTE)]
        if smoothing > 0 and source == "train":
            fig.add_trace(go.Scatter(**_xy(*thin(x, y, limit)), mode="lines", line=dict(color=color, width=1),
                                     opacity=0.25, name=f"{rid} (raw)", showlegend=False, hoverinfo="skip"))
            y = ema(y, smoothing)
        x, y = thin(x, y, limit)
        fig.add_trace(go.Scatter(**_xy(x, y), mode="lines+markers" if len(x) < 30 else "lines", name=rid,
                                 line=dict(color=color, width=2), marker=dict(size=5)))
    title = TITLES.get(key, key)
    if log_y and not all_positive:
        title += " — linear (has values ≤ 0)"
    fig.update_layout(title=dict(text=title, font=dict(size=14)), height=260, margin=dict(l=10, r=10, t=40, b=10),
                      showlegend=len(tails) > 1, legend=dict(orientation="h", y=-0.25), xaxis_title="step",
                      yaxis_type="log" if log_y and all_positive else "linear")
    if key == "top1":
        fig.update_yaxes(tickformat=".0%")
    return fig


def _xy(x: np.ndarray, y: np.ndarray) -> dict:
    """Arrays, not lists: plotly checks a list item by item (~0.3 s for a dozen 4k-point curves) and sends an
    array as compact base64. Steps as integers when they are."""
    return {"x": x.astype(np.int64) if np.array_equal(x, np.round(x)) else x, "y": y}


def point_counts(tails: dict[str, dict]) -> dict[str, int]:
    """{run_id: train rows read so far} — shown under the charts so new points are visible as numbers."""
    return {rid: len(t["train"]["step"]) for rid, t in tails.items()}


PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
