"""Filter-weights page: W(E_S), W(E), W* heatmaps at a recorded step, W* recomputed for any ρ/δ from the
stored weights (no retraining), the channels each class switches off, the paper's Figure 5 (per-filter
weight over classes, ρ=0 vs ρ=0.75) and Figure 6 (accuracy vs ρ over finished runs)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from .filter_weights import attention, blend
from .paper import figure6_top1
from .fileio import is_number
from .runstore import Run, RunError, list_runs, readable_runs
from .views_results import run_classes


def recompute_w_star(weights: dict, rho: float, delta: float, cfg: dict | None = None) -> np.ndarray:
    """W* for a new ρ/δ from the stored W(E_S) and W(E) (K, nf), with the run's official-code switches
    (ρ discarded / unscaled weights) applied exactly as training applies them."""
    cfg = cfg or {}
    w = attention(torch.as_tensor(weights["w_source"]), torch.as_tensor(weights["w_target"]), rho=rho,
                  delta=delta, discard_rho=bool(cfg.get("official_discard_rho")),
                  unscaled=bool(cfg.get("official_unscaled_weights")))
    return w.numpy()


def heatmap(w: np.ndarray, title: str, names: list[str], zmax: float, minority: set[int] = frozenset()) -> go.Figure:
    """class × filter heatmap; zero cells (switched-off channels) are the darkest colour."""
    labels = [f"{n} (minority)" if i in minority else str(n) for i, n in enumerate(names)]
    fig = go.Figure(go.Heatmap(z=np.asarray(w).tolist(), x=[f"f{j}" for j in range(w.shape[1])], y=labels, zmin=0,
                               zmax=zmax, colorscale="Viridis", colorbar=dict(thickness=10),
                               hovertemplate="class %{y}<br>filter %{x}<br>weight %{z:.3f}<extra></extra>"))
    fig.update_layout(title=dict(text=title, font=dict(size=14)), height=120 + 22 * w.shape[0],
                      margin=dict(l=10, r=10, t=40, b=10), yaxis=dict(autorange="reversed", type="category"),
                      xaxis=dict(type="category"))
    return fig


_LOADED: dict[tuple, dict[str, np.ndarray]] = {}  # (file, inode, mtime_ns, size) → its arrays
_KEPT_RUNS = 4  # the runs whose files stay loaded, most recently viewed: a process serves every viewer and run
_VIEWED: list[Path] = []  # their filter_weights folders, oldest first


def weight_history(run: Run) -> tuple[dict[int, dict[str, np.ndarray]], list[str]]:
    """Every recorded step's stored weights, {step: {"w_source", "w_target", "w_star", …}}, and one
    message per file that could not be read (damaged, or not plain arrays); those steps are left out.
    A file is read once per process and reused while it is the same file (inode, modification time, size), so
    a slider move reads nothing from disk; a file rewritten in place (a resumed run's step) is read again."""
    history, problems, seen = {}, [], set()
    folder = run.path / "filter_weights"
    for step in run.filter_weight_steps():
        path = folder / f"w_{step:08d}.npz"
        try:
            st = path.stat()
            key = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)  # an atomic rewrite is a new inode
            if key not in _LOADED:
                w = run.load_filter_weights(step)
                shapes = {np.shape(w.get(k)) for k in ("w_source", "w_target", "w_star")}
                if len(shapes) != 1 or len(shapes.pop()) != 2:
                    raise RunError(f"{path} does not hold W(E_S), W(E) and W* as three arrays of one "
                                   f"class × filter shape (it holds {sorted(w)})")
                _LOADED[key] = w
        except FileNotFoundError:  # removed between the listing and now
            continue
        except RunError as e:
            problems.append(str(e))
            continue
        history[step] = _LOADED[key]
        seen.add(key)
    for key in [k for k in _LOADED if Path(k[0]).parent == folder and k not in seen]:
        del _LOADED[key]  # superseded versions of this run's files
    if folder in _VIEWED:
        _VIEWED.remove(folder)
    _VIEWED.append(folder)
    for old in _VIEWED[:-_KEPT_RUNS]:  # runs viewed longer ago: read again if viewed again
        _VIEWED.remove(old)
        for key in [k for k in _LOADED if Path(k[0]).parent == old]:
            del _LOADED[key]
    return history, problems


def page_settings(run: Run) -> tuple[float, float, str | None]:
    """(ρ, δ, method) the page starts from: the run's own. ValueError (RunError is one) naming the problem
    when config.json is damaged, lacks them, or holds values the sliders cannot show."""
    cfg = run.config()
    try:
        rho, delta = float(cfg["rho"]), float(cfg["delta"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{type(e).__name__}: {e}") from None
    if not (0 <= rho <= 1 and delta >= 0):  # NaN fails here too
        raise ValueError(f"rho={rho} must lie in [0, 1] and delta={delta} must be >= 0")
    return rho, delta, cfg.get("method")


def weight_view(run: Run, step: int, rho: float, delta: float, stored: dict | None = None) -> dict:
    """Everything the page shows for one recorded step and a chosen ρ/δ: the three heatmaps, the
    recomputed W* (array), whether it equals the recorded one, and the deactivated-channel table.
    `stored`: that step's weights when the caller has them (weight_history), else they are read."""
    cfg = run.config()
    stored = run.load_filter_weights(step) if stored is None else stored
    w_star = recompute_w_star(stored, rho, delta, cfg)
    names, minority = run_classes(run, w_star.shape[0])
    zmax = float(max(stored["w_source"].max(), stored["w_target"].max(), w_star.max(), 1.0))
    rho0, delta0 = cfg.get("rho", -1), cfg.get("delta", -1)
    same = np.isclose(rho, rho0) and np.isclose(delta, delta0)
    own = w_star if same else recompute_w_star(stored, rho0, delta0, cfg)
    return {
        "w_source": heatmap(stored["w_source"], "W(E_S): source extractor", names, zmax, minority),
        "w_target": heatmap(stored["w_target"], f"W(E): target extractor at step {step}", names, zmax, minority),
        "w_star": heatmap(w_star, f"W* for ρ={rho:.2f}, δ={delta:.2f}", names, zmax, minority),
        "w_star_values": w_star,
        "recorded_w_star": stored["w_star"],
        "matches_recorded": bool(same and np.allclose(w_star, stored["w_star"], atol=1e-6)),
        # config.json's ρ, δ and switches give the W* training recorded: False after a hand edit of config.json
        "config_reproduces": bool(np.allclose(own, stored["w_star"], atol=1e-6)),
        "rho_ignored": bool(cfg.get("official_discard_rho")),  # official_discard_rho: W* = threshold(W(E)) alone
        "deactivated": deactivated_table(w_star, names, minority),
        "num_filters": int(w_star.shape[1]),
        "representative": representative_filters(stored),
    }


def deactivated_table(w_star: np.ndarray, names: list[str], minority: set[int] = frozenset()) -> list[dict]:
    """Per class: which filters W* switches off (weight 0), how many stay active, the strongest filter."""
    rows = []
    for k, row in enumerate(w_star):
        off = [j for j, v in enumerate(row) if v == 0]
        rows.append({"class": names[k], "minority": k in minority, "active": int((row > 0).sum()),
                     "deactivated": len(off), "deactivated filters": ", ".join(f"f{j}" for j in off) or "—",
                     "strongest filter": f"f{int(row.argmax())}" if row.max() > 0 else "—"})
    return rows


def delta_max(history: dict[int, dict], delta: float, previous: float | None = None) -> float:
    """Top of the δ slider: 2, the run's own δ, or just above the largest recorded weight (of
    weight_history's steps), whichever is largest, so that 'δ above every weight' (W* all zero) can be
    set. A blend never exceeds its parts.
    Streamlit resets a slider whose maximum changes, so `previous` (the top the page showed before, for the same
    run) is kept while it still lies above every weight; only a new weight above it moves the top, then with
    headroom (a quarter more), so a training run's growing weights move it rarely."""
    top = max(float(np.max(w[k])) for w in history.values() for k in ("w_source", "w_target"))
    need = max(2.0, delta, top + 0.05)
    if previous is not None and previous >= need:
        return float(previous)
    return float(np.ceil(need * (1.25 if previous is not None else 1.0) * 20) / 20)


def representative_filters(weights: dict, count: int = 2) -> list[int]:
    """Filters whose source weights vary most across classes (the ones Figure 5 is interesting for)."""
    spread = np.asarray(weights["w_source"]).std(axis=0)
    return [int(j) for j in np.argsort(-spread)[:count]]


FIG5_STEPS = 20  # lines per panel besides the first, the last and the selected step: 2,001 steps made 8,004 traces


def figure5_steps(steps: list[int], selected: int | None = None, count: int = FIG5_STEPS) -> list[int]:
    """The recorded steps Figure 5 draws: all of them when few, else ~count evenly spaced ones plus the first,
    the last and `selected` (the step the page's slider shows)."""
    steps = sorted(steps)
    if len(steps) <= count + 2:
        return steps
    picked = {steps[int(round(i))] for i in np.linspace(0, len(steps) - 1, count + 2)}
    if selected in steps:
        picked.add(selected)
    return sorted(picked)


def figure5(run: Run, filters: list[int], history: dict[int, dict], rhos=(0.75, 0.0),
            selected: int | None = None) -> go.Figure:
    """Paper Fig. 5: blended weight ρ·W(E_S) + (1−ρ)·W(E) of each chosen filter per class, one panel per
    (filter, ρ), one line per recorded step of `history` (weight_history; later steps darker), thinned to
    figure5_steps(…, selected); red line = equality of all filters (1)."""
    steps, stored = figure5_steps(list(history), selected), history
    num_classes = stored[steps[0]]["w_source"].shape[0]
    names, _ = run_classes(run, num_classes)
    fig = make_subplots(rows=len(filters), cols=len(rhos), shared_yaxes=True,
                        vertical_spacing=min(0.25, 0.5 / len(filters)),
                        subplot_titles=[f"filter f{j} (ρ={r:g})" for j in filters for r in rhos])
    for b, r in enumerate(rhos):
        for i, s in enumerate(steps):  # one blend per (ρ, step), shared by the filters' panels
            w = blend(torch.as_tensor(stored[s]["w_source"]), torch.as_tensor(stored[s]["w_target"]), r).numpy()
            shade = 0.25 + 0.75 * (i + 1) / len(steps)
            for a, j in enumerate(filters):
                fig.add_trace(go.Scatter(x=names, y=w[:, j].tolist(), mode="lines+markers", name=f"step {s}",
                                         legendgroup=str(s), showlegend=(a == 0 and b == 0),
                                         line=dict(color=f"rgba(31,119,180,{shade:.2f})",
                                                   width=3 if s == selected else 2)), row=a + 1, col=b + 1)
    for a in range(len(filters)):
        for b in range(len(rhos)):
            fig.add_hline(y=1.0, line=dict(color="red", width=1.5), row=a + 1, col=b + 1)
    fig.update_layout(height=280 * len(filters) + 80, margin=dict(l=10, r=10, t=70, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0 + 30 / (280 * len(filters)), x=0))
    fig.update_xaxes(type="category")
    for col in range(1, len(rhos) + 1):
        fig.update_xaxes(title_text="class", row=len(filters), col=col)
    return fig


def rho_accuracy(root: str | Path, run: Run) -> tuple[list[dict], str]:
    """Paper Fig. 6 from our runs: the finished DFG runs of the run's condition (preset, dataset and every
    setting other than ρ and the replicate keys, tables.REPLICATE_KEYS, equal to the run's), grouped by ρ via
    dfg.tables.summarise (top-1 mean ± std in %). Returns (rows, note): rows are empty unless two ρ have
    results; the note names the DFG runs of the preset left out because another setting differs."""
    from .tables import setting_text, summarise, varied_keys

    cfg, runs = run.config(), []
    for r in readable_runs(list_runs(root))[0]:
        c = r.config()  # read once per run
        if (c.get("method"), c.get("dataset"), c.get("preset")) == ("dfg", cfg.get("dataset"), cfg.get("preset")) \
                and is_number(c.get("rho")) and np.isfinite(c["rho"]):  # a hand-edited ρ of another type: left out
            runs.append((r, c))
    others = [k for k in varied_keys([c for _, c in runs] + [cfg]) if k != "rho"]
    differ = {r.id: [k for k in others if setting_text(c.get(k)) != setting_text(cfg.get(k))] for r, c in runs}
    same = [r for r, _ in runs if not differ[r.id]]
    keys = sorted({k for ks in differ.values() for k in ks})
    left = len(runs) - len(same)
    note = (f"{left} DFG run(s) of this preset left out: they differ from {run.id} in {', '.join(keys)}. "
            f"Each point averages seeds of one setting." if left else "")
    rows = [s for s in summarise(same, by=["rho"]) if s["n"] > 0]
    if len({s["rho"] for s in rows}) < 2:
        return [], note
    return [{"rho": float(s["rho"]), "top1_mean": s["top1_mean"], "top1_std": s["top1_std"] or 0.0,
             "runs": s["n"], "paper": figure6_top1(cfg.get("dataset"), "dfg", s["rho"]), "notes": s["notes"]}
            for s in sorted(rows, key=lambda s: s["rho"])], note


def rho_figure(rows: list[dict]) -> go.Figure:
    fig = go.Figure(go.Scatter(x=[r["rho"] for r in rows], y=[r["top1_mean"] for r in rows], mode="lines+markers",
                               error_y=dict(type="data", array=[r["top1_std"] for r in rows]), name="our runs",
                               text=[f"{r['runs']} run(s)" for r in rows]))
    paper = [r for r in rows if r.get("paper") is not None]
    if paper:
        fig.add_trace(go.Scatter(x=[r["rho"] for r in paper], y=[r["paper"] for r in paper], mode="markers",
                                 marker=dict(symbol="x", size=10, color="red"), name="paper (§4.3)"))
    fig.update_layout(title="test accuracy vs ρ (paper Fig. 6)", xaxis_title="ρ", yaxis_title="top-1 (%)",
                      height=320, margin=dict(l=10, r=10, t=40, b=10))
    return fig
