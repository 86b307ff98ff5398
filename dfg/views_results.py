"""Results page: the Table-2-style comparison of finished runs (dfg.tables.summarise, paper values beside
ours), per-run rows, per-class recall bars with minority classes highlighted, and confusion matrices."""
from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

from .paper import method_label
from .runstore import Run, list_runs, readable_runs
from .tables import BEST_VAL_LABEL, has_best_val, run_row, summarise, to_csv, varied_keys

def _pm(mean, std) -> str:
    if mean is None:
        return "—"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def format_summary(raw: list[dict], by: list[str]) -> list[dict]:
    """summarise() rows for display: 'mean ± std' strings in %, the paper's Table 2 value beside ours."""
    return [{"dataset": s["dataset"], "method": method_label(s["method"]), **{k: s.get(k) for k in by},
             "n": s["n"], "top1 (%)": _pm(s["top1_mean"], s["top1_std"]),
             "paper top1 (%)": _pm(s["paper_top1_mean"], s["paper_top1_std"]),
             "balanced acc (%)": _pm(s["balanced_acc_mean"], s["balanced_acc_std"]),
             "macro F1 (%)": _pm(s["macro_f1_mean"], s["macro_f1_std"]),
             "minority recall (%)": _pm(s["minority_recall_mean"], s["minority_recall_std"]),
             **({f"{BEST_VAL_LABEL.lower()} (%)": _pm(s["best_val_top1_mean"], s["best_val_top1_std"])}
                if has_best_val(raw) else {}),
             "notes": s["notes"]} for s in raw]


def comparison(runs: list[Run]) -> dict:
    """{"summary": display rows, "summary_raw": summarise() rows, "per_run": one row per run (in %),
    "by": the config fields that vary between runs of one preset/method (they split the groups),
    "damaged": one message per run left out because its config.json cannot be read}."""
    runs, damaged = readable_runs(runs)
    by = varied_keys([r.config() for r in runs])
    rows = [run_row(r, by) for r in runs]
    raw = summarise(runs, by, rows=rows)
    return {"summary": format_summary(raw, by), "summary_raw": raw, "per_run": rows, "by": by, "damaged": damaged}


def sweeps(root: str | Path) -> list[dict]:
    """dfg.sweep.load_sweep() of every sweep under <root>/sweeps, newest first ([] without dfg.sweep)."""
    try:
        from .sweep import list_sweeps, load_sweep
    except ImportError:
        return []
    out = []
    for info in list_sweeps(root):
        try:
            out.append(load_sweep(root, info["name"]))
        except ValueError:
            continue  # a sweep folder being written right now
    return out


def last_eval(run: Run) -> dict | None:
    """The final test evaluation (final.json), else the newest eval row while the run trains. Call it once per
    page run and hand the row to the figures and tables below (each used to read the file again)."""
    last = (run.read_json("final.json") or {}).get("last")
    return last or run.newest_eval()


def _classes(run: Run, k: int) -> tuple[list[str], set[int]]:
    data = run.read_json("data.json") or {}
    names = [str(n) for n in data.get("class_names") or []]
    return (names if len(names) == k else [str(i) for i in range(k)]), set(data.get("minority") or [])


def data_rows(run: Run) -> tuple[list[dict], list[str]]:
    """What a run trained and tested on, per class (data.json: role under step imbalance, images available,
    kept for training, carved for validation, tested), and the data warnings its log also printed."""
    data = run.read_json("data.json") or {}
    majority, minority = set(data.get("majority") or []), set(data.get("minority") or [])
    rows = [{"class": c["class"], "name": c["name"],
             "role": "majority" if c["class"] in majority else "minority" if c["class"] in minority else "",
             "available": c["available"], "train": c["kept"], "val": c["val"], "test": c["test"]}
            for c in data.get("class_counts") or []]
    return rows, [str(w) for w in data.get("warnings") or []]


def recall_figure(run: Run, ev: dict | None = None) -> go.Figure | None:
    """Per-class test recall; minority classes in orange, majority in blue; dashed = top-1."""
    ev = ev or last_eval(run)
    if not ev:
        return None
    recall = ev["per_class_recall"]
    names, minority = _classes(run, len(recall))
    colors = ["#ff7f0e" if i in minority else "#1f77b4" for i in range(len(recall))]
    fig = go.Figure(go.Bar(x=names, y=recall, marker_color=colors,
                           text=[f"{v:.0%}" for v in recall], textposition="outside",
                           hovertemplate="class %{x}<br>recall %{y:.1%}<extra></extra>"))
    fig.add_hline(y=ev["top1"], line=dict(dash="dash", color="grey"), annotation_text=f"top-1 {ev['top1']:.1%}")
    fig.update_layout(title=f"{run.id}: per-class recall at step {ev['step']} (orange = minority)", height=340,
                      margin=dict(l=10, r=10, t=40, b=10), xaxis=dict(type="category", title="class"))
    fig.update_yaxes(range=[0, 1.1], tickformat=".0%")
    return fig


def confusion_figure(run: Run, ev: dict | None = None) -> go.Figure | None:
    """Confusion matrix (rows = true class, columns = predicted), counts with row-normalised colour."""
    ev = ev or last_eval(run)
    if not ev or not ev.get("confusion"):
        return None
    cm = ev["confusion"]
    names, minority = _classes(run, len(cm))
    rates = [[v / max(sum(row), 1) for v in row] for row in cm]
    ylab = [f"{n}*" if i in minority else n for i, n in enumerate(names)]
    fig = go.Figure(go.Heatmap(z=rates, x=names, y=ylab, text=cm, texttemplate="%{text}", colorscale="Blues",
                               zmin=0, zmax=1, colorbar=dict(thickness=10, tickformat=".0%"),
                               hovertemplate="true %{y}<br>predicted %{x}<br>count %{text}<extra></extra>"))
    fig.update_layout(title=f"{run.id}: confusion matrix (* = minority)", height=120 + 28 * len(cm),
                      margin=dict(l=10, r=10, t=40, b=10), xaxis=dict(type="category", title="predicted"),
                      yaxis=dict(type="category", autorange="reversed", title="true"))
    return fig


def confusion_rows(run: Run, ev: dict | None = None) -> list[dict]:
    """The confusion matrix as table rows (for the CSV download)."""
    ev = ev or last_eval(run) or {}
    cm = ev.get("confusion") or []
    names, _ = _classes(run, len(cm))
    return [{"true": names[i], **{f"pred {names[j]}": v for j, v in enumerate(row)}} for i, row in enumerate(cm)]


def recall_rows(run: Run, ev: dict | None = None) -> list[dict]:
    ev = ev or last_eval(run) or {}
    recall = ev.get("per_class_recall") or []
    names, minority = _classes(run, len(recall))
    return [{"class": names[i], "minority": i in minority, "recall": r} for i, r in enumerate(recall)]


def csv_bytes(rows: list[dict]) -> bytes:
    return to_csv(rows).encode()


def finished_runs(root: str | Path) -> list[Run]:
    return [r for r in list_runs(root) if r.status().get("state") == "finished"]
