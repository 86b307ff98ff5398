"""Results page: finished runs and sweeps as the paper's Table 2 (ours beside the paper's), per-class recall
with minority classes highlighted, confusion matrices, each run's images per class and data warnings, and a
CSV download of every table."""
import pandas as pd
import streamlit as st

from dfg.runstore import Run, list_runs
from dfg.views_results import (comparison, confusion_figure, confusion_rows, csv_bytes, data_rows, format_summary,
                               last_eval, recall_figure, recall_rows, sweeps)
from pages._shared import page_context

root, run_id = page_context()
st.title("Results")
runs = list_runs(root)
if not runs:
    st.info("No runs yet.")
    st.stop()


def table(rows: list[dict], name: str, key: str, csv_rows: list[dict] | None = None) -> None:
    """A table and its CSV download (csv_rows: the numeric rows behind a formatted table)."""
    st.dataframe(pd.DataFrame(rows), hide_index=True, key=f"tbl.{key}")
    st.download_button(f"Download {name}", csv_bytes(csv_rows or rows), file_name=name, mime="text/csv",
                       key=f"dl.{key}", icon=":material/download:")


st.subheader("All runs in this folder (Table 2 layout)")
comp = comparison(runs)
for problem in comp["damaged"]:
    st.warning(f"Left out: {problem}")
st.caption("Top-1 etc. in %, mean ± sample std over finished runs of each preset/method"
           + (f" and {', '.join(comp['by'])}" if comp["by"] else "") + "; the paper's Table 2 beside ours.")
table(comp["summary"], "results.csv", "summary", comp["summary_raw"])
with st.expander("Every run"):
    table(comp["per_run"], "per_run.csv", "per_run")

for sw in sweeps(root):
    st.subheader(f"Sweep {sw['name']}")
    table(format_summary(sw["summary"], sw["varied"]), f"sweep_{sw['name']}.csv", f"sweep.{sw['name']}", sw["summary"])
    if sw.get("rho_curve"):
        table(sw["rho_curve"], f"sweep_{sw['name']}_rho.csv", f"sweep.{sw['name']}.rho")

st.subheader("Per class")
ids = [r.id for r in runs]
chosen = st.multiselect("Runs", ids, default=[run_id] if run_id in ids else ids[:1],
                        key=f"res.runs.{run_id}")
for rid in chosen:
    run = Run(root, rid)
    counts, warnings = data_rows(run)
    for w in warnings:
        st.warning(f"{rid}: {w}", icon=":material/warning:")
    if counts:
        with st.expander(f"{rid}: images per class (train, validation, test)"):
            table(counts, f"{rid}_data.csv", f"data.{rid}")
    ev = last_eval(run)  # once: a training run's newest eval row comes from the end of metrics.jsonl
    fig = recall_figure(run, ev) if ev else None  # without one, none of the figures has anything to show
    if fig is None:
        st.info(f"{rid} has no test evaluation yet.")
        continue
    left, right = st.columns(2)
    left.plotly_chart(fig, key=f"res.recall.{rid}", width="stretch")
    right.plotly_chart(confusion_figure(run, ev), key=f"res.cm.{rid}", width="stretch")
    d = st.columns(2)
    d[0].download_button("Per-class recall (CSV)", csv_bytes(recall_rows(run, ev)), f"{rid}_recall.csv", "text/csv",
                         key=f"dl.recall.{rid}", icon=":material/download:")
    d[1].download_button("Confusion matrix (CSV)", csv_bytes(confusion_rows(run, ev)), f"{rid}_confusion.csv",
                         "text/csv", key=f"dl.cm.{rid}", icon=":material/download:")
