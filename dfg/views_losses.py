"""Live losses page: incremental reading of metrics.jsonl (only new rows each poll), EMA smoothing and the
plotly charts (one per loss, several runs overlaid)."""
from __future__ import annotations

import plotly.graph_objects as go

from .fileio import is_number
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


def new_tail() -> dict:
    """What a page keeps per run in session state: byte offset into metrics.jsonl and the rows so far."""
    return {"offset": 0, "train": [], "eval": []}


def update_tail(tail: dict, run: Run) -> int:
    """Read only the rows appended since the last call; returns how many arrived. A file that shrank
    (a resumed run drops rows past its checkpoint) is read again from the start."""
    size = (run.path / "metrics.jsonl").stat().st_size if (run.path / "metrics.jsonl").exists() else 0
    if size < tail["offset"]:
        tail.update(new_tail())
    rows, tail["offset"] = run.read_metrics(tail["offset"])
    for r in rows:
        if not is_number(r.get("step")):
            continue  # a hand-edited row without a step cannot be placed on the chart
        if r.get("kind") == "train":
            tail["train"].append(r)
        elif r.get("kind") == "eval" and r.get("split", "test") == "test":
            tail["eval"].append(r)
    return len(rows)


def ema(values: list[float], smoothing: float) -> list[float]:
    """Exponential moving average s_t = a·s_{t-1} + (1−a)·x_t with debiasing (as TensorBoard), a in [0, 1)."""
    out, s, w = [], 0.0, 0.0
    for v in values:
        s = smoothing * s + (1 - smoothing) * v
        w = smoothing * w + (1 - smoothing)
        out.append(s / w if w > 0 else v)
    return out


def present_keys(tails: dict[str, dict]) -> list[str]:
    """Loss keys that occur in any run, paper losses first."""
    seen = {k for t in tails.values() for r in t["train"] for k in r}
    return [k for k in LOSS_KEYS + EXTRA_KEYS if k in seen]


def metric_figure(tails: dict[str, dict], key: str, *, smoothing: float = 0.0, log_y: bool = False) -> go.Figure:
    """One chart: `key` against step for every run in `tails` ({run_id: tail}); raw values faint under the
    EMA when smoothing > 0. Log scale is applied only when every value is positive (L_D is negative)."""
    fig = go.Figure()
    all_positive = True
    source = "eval" if key == "top1" else "train"
    for i, (rid, tail) in enumerate(tails.items()):
        rows = [r for r in tail[source] if is_number(r.get(key))]  # a hand-edited "x" is left out, not a crash
        if not rows:
            continue
        x, y = [r["step"] for r in rows], [float(r[key]) for r in rows]
        all_positive &= min(y) > 0
        color = PALETTE[i % len(PALETTE)]
        if smoothing > 0 and source == "train":
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line=dict(color=color, width=1), opacity=0.25,
                                     name=f"{rid} (raw)", showlegend=False, hoverinfo="skip"))
            y = ema(y, smoothing)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers" if len(x) < 30 else "lines", name=rid,
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


def point_counts(tails: dict[str, dict]) -> dict[str, int]:
    """{run_id: train rows read so far} — shown under the charts so new points are visible as numbers."""
    return {rid: len(t["train"]) for rid, t in tails.items()}


PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
