"""Results tables from run folders: per-run metrics, mean ± std per (dataset, method, varied settings)
next to the paper's Table 2, and the ρ curve; rendered as Markdown, CSV and LaTeX. Values are in %."""
from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from .fileio import atomic_write_bytes, is_number
from .paper import FIGURE6, dataset_label, figure6_top1, method_label, paper_top1
from .runstore import Run, as_record

METRICS = ("top1", "balanced_acc", "macro_f1", "minority_recall")
METRIC_LABELS = {"top1": "Top-1", "balanced_acc": "Balanced acc.", "macro_f1": "Macro-F1",
                 "minority_recall": "Minority recall"}
BEST_VAL_LABEL = "Top-1 at best val."  # the test top-1 of the step with the best validation top-1
# Config fields that make replicates of one condition (averaged over), never a group of their own.
REPLICATE_KEYS = {"seed", "majority", "threads", "device", "data_root", "download", "log_every", "eval_every",
                  "ckpt_every", "preset", "dataset", "method"}
_ORDER = ("demo", "svhn", "fmnist", "stl10", "cinic10", "caltech256", "food101")
_METHOD_ORDER = ("original", "finetune", "delta", "difa_cmwgan", "dfg")


def run_row(run: Run, keys=()) -> dict:
    """One run's identity, state and final test metrics (in %); `keys` adds those config fields."""
    cfg, status = run.config(), run.status()
    final = run.read_record("final.json")
    last = as_record(final.get("last"))
    data = run.read_record("data.json")
    majority = data.get("majority", cfg.get("majority") or [])
    majority = majority if isinstance(majority, list) else []
    row = {"run_id": run.id, "preset": cfg.get("preset"), "dataset": cfg.get("dataset"), "method": cfg.get("method"),
           "seed": cfg.get("seed"), "majority": " ".join(str(c) for c in majority),
           **{k: cfg.get(k) for k in keys}, "state": status.get("state"), "step": status.get("step"),
           "total_steps": cfg.get("steps")}
    done = row["state"] == "finished"
    for m in METRICS:
        v = last.get(m) if done else None
        row[m] = 100.0 * v if is_number(v) else None  # a hand-edited value that is no number: not counted
    # Best-on-validation (only with a validation split): the test top-1 of the step with the best val top-1.
    best = as_record(final.get("best_on_val")) if done else {}
    test_at_best = as_record(best.get("test"))
    row["best_val_top1"] = 100.0 * test_at_best["top1"] if is_number(test_at_best.get("top1")) else None
    row["best_val_step"] = best.get("step") if row["best_val_top1"] is not None else None
    row["error"] = status.get("error") if row["state"] != "finished" else None
    return row


def setting_text(v) -> str:
    """A config value as compared between runs: numbers as floats, so ratio 10 (a preset's) and 10.0 (the app
    form's) are one setting."""
    return repr(float(v)) if is_number(v) else repr(v)


def varied_keys(configs: list[dict]) -> list[str]:
    """Config fields whose value differs between runs of one (preset, dataset, method), replicates excluded."""
    seen: dict[tuple, dict[str, set]] = {}
    for c in configs:
        per = seen.setdefault((c.get("preset"), c.get("dataset"), c.get("method")), {})
        for k, v in c.items():
            if k not in REPLICATE_KEYS:
                per.setdefault(k, set()).add(setting_text(v))
    return sorted({k for per in seen.values() for k, vals in per.items() if len(vals) > 1})


def _sort_key(row: dict, by) -> tuple:
    p, m = row.get("preset"), row.get("method")
    return (_ORDER.index(p) if p in _ORDER else len(_ORDER), p or "", row.get("dataset") or "",
            _METHOD_ORDER.index(m) if m in _METHOD_ORDER else len(_METHOD_ORDER), m or "",
            *(_comparable(row.get(k)) for k in by))


def _comparable(v):
    return (0, v, "") if is_number(v) else (1, 0, str(v))


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1); std is None for a single value (shown as "—")."""
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def _drop_repeats(done: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the first finished run of each (seed, majority classes), the later ones). Within one group a second
    run of the same seed is the same experiment again (seeded runs repeat exactly on a CPU): counting it would
    shrink the std without adding a sample. Rows without a seed are all kept."""
    kept, repeats, seen = [], [], set()
    for r in done:
        key = (r.get("seed"), r.get("majority"))
        if key[0] is not None and key in seen:
            repeats.append(r)
        else:
            seen.add(key)
            kept.append(r)
    return kept, repeats


def summarise(runs: list[Run], by: list[str] | None = None, rows: list[dict] | None = None) -> list[dict]:
    """Group runs by (preset, dataset, method, *by) — `by` defaults to the varied config fields — and give the
    mean/std of each metric over finished runs (in %; a repeated seed counts once, the first listed: the
    newest in the app), the paper's Table 2 value and notes on the rest."""
    if by is None:
        by = varied_keys([r.config() for r in runs])
    rows = rows if rows is not None else [run_row(r, by) for r in runs]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["preset"], row["dataset"], row["method"], *(setting_text(row.get(k)) for k in by)),
                          []).append(row)
    out = []
    for members in groups.values():
        first, done = members[0], [r for r in members if r["state"] == "finished" and r["top1"] is not None]
        done, repeats = _drop_repeats(done)
        s = {"preset": first["preset"], "dataset": first["dataset"], "method": first["method"],
             **{k: first.get(k) for k in by}, "n": len(done), "n_runs": len(members)}
        for m in (*METRICS, "best_val_top1"):
            s[f"{m}_mean"], s[f"{m}_std"] = _mean_std([r[m] for r in done if r.get(m) is not None])
        paper = paper_top1(first["dataset"], first["method"])
        s["paper_top1_mean"], s["paper_top1_std"] = paper if paper else (None, None)
        pending = [r for r in members if r not in done and r not in repeats]
        states: dict[str, int] = {}
        for r in pending:
            states[r["state"]] = states.get(r["state"], 0) + 1
        notes = [", ".join(f"{n} {st}" for st, n in sorted(states.items()))] if states else []
        if repeats:
            notes.append(f"{len(repeats)} repeat(s) of a seed already counted left out: "
                         + ", ".join(f"{r['run_id']} (seed {r['seed']})" for r in repeats))
        s["notes"] = "; ".join(notes + [f"{r['run_id']}: {r['error']}" for r in pending if r.get("error")])
        out.append(s)
    return sorted(out, key=lambda s: _sort_key(s, by))


def rho_curve(rows: list[dict], by: list[str]) -> list[dict]:
    """Curve-ready ρ table from per-run rows: one row per ρ, columns '<series> mean|std|n' where a series
    is preset/method (+ the other varied settings); '<series> paper' where Figure 6 gives a value."""
    others = [k for k in by if k != "rho"]
    series: dict[str, dict] = {}
    for r in rows:
        label = "/".join([r["preset"], r["method"]] + [f"{k}={r.get(k)}" for k in others])
        series.setdefault(label, {"dataset": r["dataset"], "method": r["method"], "runs": {}})
        series[label]["runs"].setdefault(float(r["rho"]), []).append(r)
    out = []
    for rho in sorted({float(r["rho"]) for r in rows}):
        line: dict = {"rho": rho}
        for label, s in series.items():
            vals = [r["top1"] for r in s["runs"].get(rho, []) if r["state"] == "finished" and r["top1"] is not None]
            line[f"{label} mean"], line[f"{label} std"] = _mean_std(vals)
            line[f"{label} n"] = len(vals)
            if s["dataset"] == FIGURE6["dataset"] and s["method"] == FIGURE6["method"]:
                line[f"{label} paper"] = figure6_top1(s["dataset"], s["method"], rho)
        out.append(line)
    return out


# -- rendering ---------------------------------------------------------------------------------------
def _pm(mean, std) -> str:
    if mean is None:
        return "—"
    return f"{mean:.2f} ± {'—' if std is None else f'{std:.2f}'}"


def _cell(v) -> str:
    """A measured number (accuracy, std) to two decimals; text as it is. Config values go through `value_text`."""
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) >= 0.01 or v == 0 else f"{v:.3g}"
    return str(v)


def value_text(v) -> str:
    """A config value as its exact text, never rounded, so that rows of a varied setting that differ only
    after two decimals (ρ 0.12 and 0.125, lr 1e-4 and 1.5e-4) keep distinct labels; also a --set value's
    canonical text (dfg.grid.canonical): a whole float as an integer, another as the shorter of its repr and
    scientific forms (0.125, 0.01, 1e-5), a bool as true/false, None as "—"."""
    if v is None:
        return "—"
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


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A GitHub Markdown table of `rows` with (key, header) columns; values already strings or numbers."""
    head = "| " + " | ".join(h for _, h in columns) + " |\n|" + "|".join("---" for _ in columns) + "|\n"
    return head + "".join("| " + " | ".join(_cell(r.get(k)).replace("|", "\\|") for k, _ in columns) + " |\n"
                          for r in rows)


def _display_rows(summary: list[dict], by=()) -> list[dict]:
    out = []
    for s in summary:
        d = {**s, **{k: value_text(s.get(k)) for k in by},  # config values exact, never rounded
             "dataset_label": dataset_label(s["dataset"]), "method_label": method_label(s["method"]),
             "paper": _pm(s["paper_top1_mean"], s["paper_top1_std"]) if s["paper_top1_mean"] is not None else "—"}
        for m in (*METRICS, "best_val_top1"):
            d[m] = _pm(s.get(f"{m}_mean"), s.get(f"{m}_std"))
        out.append(d)
    return out


def summary_markdown(summary: list[dict], by: list[str]) -> str:
    cols = [("dataset_label", "Dataset"), ("method_label", "Method"), *[(k, k) for k in by], ("n", "n"),
            ("top1", "Top-1 (%)"), ("paper", "Paper Table 2 (%)"),
            *[(m, f"{METRIC_LABELS[m]} (%)") for m in METRICS[1:]]]
    if has_best_val(summary):
        cols.append(("best_val_top1", BEST_VAL_LABEL + " (%)"))
    text = markdown_table(_display_rows(summary, by), cols)
    notes = [f"- {s['dataset']}/{s['method']}" + "".join(f" {k}={value_text(s.get(k))}" for k in by)
             + f": {s['notes']}" for s in summary if s["notes"]]
    text += "\nmean ± sample std (ddof=1) over finished runs; — = a single run or none.\n"
    if has_best_val(summary):
        text += (f"{BEST_VAL_LABEL}: the test top-1 at the step with the best validation top-1 (the other columns"
                 " are the last iterate).\n")
    return text + ("\nNotes:\n" + "\n".join(notes) + "\n" if notes else "")


_TEX = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "|": r"\textbar{}", "<": r"\textless{}",
        ">": r"\textgreater{}"}


def has_best_val(summary: list[dict]) -> bool:
    """Whether any group has best-on-validation figures (runs with a validation split)."""
    return any(s.get("best_val_top1_mean") is not None for s in summary)


def _tex(text: str) -> str:
    """Every LaTeX special character escaped, in one pass (the braces that escapes add stay as they are)."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def _tex_pm(mean, std) -> str:
    if mean is None:
        return "--"
    return f"${mean:.2f} \\pm {std:.2f}$" if std is not None else f"${mean:.2f} \\pm$ --"


def _n_text(s: dict) -> str:
    """$n$ of a group: the finished runs counted, as "counted/all" when some of its runs are not counted."""
    n, total = s["n"], s.get("n_runs", s["n"])
    return str(n) if n == total else f"{n}/{total}"


def summary_latex(summary: list[dict], by: list[str]) -> str:
    """A booktabs tabular; below its rule, when some group has runs not counted, what $n$ = a/b means and each
    group's notes (failed, diverged, pending runs and their errors), as the Markdown lists them."""
    best = has_best_val(summary)
    heads = ["Dataset", "Method", *by, "$n$", "Top-1 (\\%)", "Paper (\\%)", "Min. recall (\\%)",
             *(["Top-1 best val. (\\%)"] if best else [])]
    lines = ["\\begin{tabular}{" + "l" * (2 + len(by)) + "r" * (4 + best) + "}", "\\toprule",
             " & ".join(_tex(h) if not h.startswith("$") and "\\%" not in h else h for h in heads) + " \\\\",
             "\\midrule"]
    for s in summary:
        cells = [_tex(dataset_label(s["dataset"])), _tex(method_label(s["method"])),
                 *[_tex(value_text(s.get(k)) if s.get(k) is not None else "--") for k in by], _n_text(s),
                 _tex_pm(s["top1_mean"], s["top1_std"]),
                 _tex_pm(s["paper_top1_mean"], s["paper_top1_std"]),
                 _tex_pm(s["minority_recall_mean"], s["minority_recall_std"]),
                 *([_tex_pm(s["best_val_top1_mean"], s["best_val_top1_std"])] if best else [])]
        lines.append(" & ".join(cells) + " \\\\")
    lines.append("\\bottomrule")
    width = 6 + len(by) + best
    notes = [f"{dataset_label(s['dataset'])} / {method_label(s['method'])}"
             + "".join(f", {k}={value_text(s.get(k))}" for k in by) + f": {s['notes']}" for s in summary if s["notes"]]
    if notes or any(_n_text(s) != str(s["n"]) for s in summary):
        notes.insert(0, "n = a/b: a finished runs counted of the b runs in the group (see the notes).")
    for note in notes:  # one line each (a blank line in a cell would end the paragraph LaTeX is in)
        lines.append(f"\\multicolumn{{{width}}}{{l}}{{\\footnotesize {_tex(' '.join(note.split()))}}} \\\\")
    return "\n".join(lines + ["\\end{tabular}", ""])


def to_csv(rows: list[dict]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    return buf.getvalue()


def write_tables(out_dir: str | Path, rows: list[dict], by: list[str]) -> dict[str, Path]:
    """results.md/.csv/.tex from per-run rows (`run_row`), per_run.csv, and rho_curve.csv/.md when ρ varies."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise([], by, rows=rows)
    files = {"results.md": summary_markdown(summary, by), "results.csv": to_csv(summary),
             "results.tex": summary_latex(summary, by), "per_run.csv": to_csv(rows)}
    if "rho" in by:
        curve = rho_curve(rows, by)
        cols = [(k, k) for k in curve[0]] if curve else []
        files["rho_curve.csv"] = to_csv(curve)
        shown = [{**c, "rho": value_text(c["rho"])} for c in curve]  # ρ exact; the measured columns as numbers
        files["rho_curve.md"] = (markdown_table(shown, cols) + f"\nPaper (Figure 6): {FIGURE6['claim']}.\n")
    paths = {}
    for name, text in files.items():
        atomic_write_bytes(out_dir / name, text.encode())
        paths[name] = out_dir / name
    return paths
