"""Results page: the Table-2-style comparison of finished runs (dfg.tables.summarise, paper values beside
ours), per-run rows, per-class recall bars with minority classes highlighted, and confusion matrices."""
from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

from .fileio import is_number
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


def usable_eval(ev) -> dict | None:
    """An evaluation record the figures can draw: numeric top-1 and a list of numeric per-class recalls (a
    confusion matrix, when present, K×K counts). Anything else, e.g. a hand-edited final.json, is None."""
    if not isinstance(ev, dict) or not is_number(ev.get("top1")):
        return None
    recall = ev.get("per_class_recall")
    if not isinstance(recall, list) or not recall or not all(is_number(v) for v in recall):
        return None
    cm = ev.get("confusion")
    if cm is not None and not (isinstance(cm, list) and len(cm) == len(recall) and all(
            isinstance(row, list) and len(row) == len(recall) and all(is_number(v) for v in row) for row in cm)):
        ev = {k: v for k, v in ev.items() if k != "confusion"}  # the recall bars can still be drawn
    return ev


def last_eval(run: Run) -> dict | None:
    """The final test evaluation (final.json), else the newest eval row while the run trains; None when neither
    is usable (usable_eval). Call it once per page run and hand the row to the figures and tables below."""
    return usable_eval(run.read_record("final.json").get("last")) or usable_eval(run.newest_eval())


def _list(v) -> list:
    return v if isinstance(v, list) else []


def _ints(v) -> set[int]:
    """Class indices from a data.json list (anything else in a hand-edited file is ignored)."""
    return {c for c in _list(v) if isinstance(c, int)}


def run_classes(run: Run, k: int) -> tuple[list[str], set[int]]:
    """(class names, minority class indices) from data.json; indices as names when it lacks k names."""
    data = run.read_record("data.json")
    names = [str(n) for n in _list(data.get("class_names"))]
    return (names if len(names) == k else [str(i) for i in range(k)]), _ints(data.get("minority"))


def data_rows(run: Run) -> tuple[list[dict], list[str]]:
    """What a run trained and tested on, per class (data.json: role under step imbalance, images available,
    kept for training, carved for validation, tested), and the data warnings its log also printed."""
    data = run.read_record("data.json")
    majority, minority = _ints(data.get("majority")), _ints(data.get("minority"))
    rows = [{"class": c.get("class"), "name": c.get("name"),
             "role": "majority" if c.get("class") in majority else
             "minority" if c.get("class") in minority else "",
             "available": c.get("available"), "train": c.get("kept"), "val": c.get("val"), "test": c.get("test")}
            for c in _list(data.get("class_counts")) if isinstance(c, dict)]
    return rows, [str(w) for w in _list(data.get("warnings"))]


def recall_figure(run: Run, ev: dict | None = None) -> go.Figure | None:
    """Per-class test recall; minority classes in orange, majority in blue; dashed = top-1."""
    ev = usable_eval(ev) or last_eval(run)
    if not ev:
        return None
    recall = ev["per_class_recall"]
    tested = tested_classes(ev)
    names, minority = run_classes(run, len(recall))
    colors = ["#ff7f0e" if i in minority else "#1f77b4" for i in range(len(recall))]
    # a class without test images has no recall: no bar, "no test images" where it would stand
    fig = go.Figure(go.Bar(x=names, y=[v if t else None for v, t in zip(recall, tested)], marker_color=colors,
                           text=[f"{v:.0%}" if t else "" for v, t in zip(recall, tested)], textposition="outside",
                           hovertemplate="class %{x}<br>recall %{y:.1%}<extra></extra>"))
    for i in (i for i, t in enumerate(tested) if not t):
        fig.add_annotation(x=names[i], y=0.02, text="no test images", textangle=-90, showarrow=False,
                           yanchor="bottom", font=dict(size=10, color="grey"))
    fig.add_hline(y=ev["top1"], line=dict(dash="dash", color="grey"), annotation_text=f"top-1 {ev['top1']:.1%}")
    step = f" at step {ev['step']}" if is_number(ev.get("step")) else ""
    fig.update_layout(title=f"{run.id}: per-class recall{step} (orange = minority)", height=340,
                      margin=dict(l=10, r=10, t=40, b=10), xaxis=dict(type="category", title="class"))
    fig.update_yaxes(range=[0, 1.1], tickformat=".0%")
    return fig


def tested_classes(ev: dict) -> list[bool]:
    """Per class, whether the test set had images of it (the confusion matrix's row sums); all True when
    the record has no confusion matrix. Recall is stored as 0 for an untested class, which is no measurement."""
    cm = ev.get("confusion")
    return [sum(row) > 0 for row in cm] if cm else [True] * len(ev["per_class_recall"])


def confusion_figure(run: Run, ev: dict | None = None) -> go.Figure | None:
    """Confusion matrix (rows = true class, columns = predicted), counts with row-normalised colour."""
    ev = usable_eval(ev) or last_eval(run)
    if not ev or not ev.get("confusion"):
        return None
    cm = ev["confusion"]
    names, minority = run_classes(run, len(cm))
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
    ev = usable_eval(ev) or last_eval(run) or {}
    cm = ev.get("confusion") or []
    names, _ = run_classes(run, len(cm))
    return [{"true": names[i], **{f"pred {names[j]}": v for j, v in enumerate(row)}} for i, row in enumerate(cm)]


def recall_rows(run: Run, ev: dict | None = None) -> list[dict]:
    """Per-class recall for the CSV download; empty (None) for a class without test images."""
    ev = usable_eval(ev) or last_eval(run)
    if not ev:
        return []
    recall = ev["per_class_recall"]
    names, minority = run_classes(run, len(recall))
    return [{"class": names[i], "minority": i in minority, "recall": r if t else None}
            for i, (r, t) in enumerate(zip(recall, tested_classes(ev)))]


def csv_bytes(rows: list[dict]) -> bytes:
    return to_csv(rows).encode()


def finished_runs(root: str | Path) -> list[Run]:
    return [r for r in list_runs(root) if r.status().get("state") == "finished"]
