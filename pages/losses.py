"""Live losses page: L_D, L_G, L_E, L_rC, L_gC, L_cC, GP and test accuracy per step, several runs overlaid,
refreshed every 2 s while a run trains by reading only the metric rows appended since the last poll."""
import streamlit as st

from dfg import views
from dfg.runstore import Run
from dfg.views_losses import (MAX_POINTS, evict, metric_figure, new_tail, point_counts, present_keys, thinned,
                              update_tail)
from pages._shared import page_context

root, current = page_context()
st.title("Live losses")
ids = views.run_ids(root)
if not ids:
    st.info("No runs yet: start one on the Train page or the demo on the first page.")
    st.stop()

c = st.columns([4, 2, 1])
chosen = c[0].multiselect("Runs (overlaid)", ids, default=[current] if current in ids else ids[:1],
                          key=f"loss.runs.{current}")  # a new sidebar run starts a new selection
smoothing = c[1].slider("Smoothing (EMA)", 0.0, 0.99, 0.0, 0.01, key="loss.smoothing",
                        help="exponential moving average of each curve; the raw values stay faint underneath")
log_y = c[2].toggle("Log scale", key="loss.log")
tails = st.session_state.setdefault("loss.tails", {})  # "<root>::<run>" -> {"offset", "train", "eval"}
evict(tails, {f"{root}::{rid}" for rid in chosen})  # only the shown runs stay in memory
live = any(views.progress(Run(root, rid))["active"] for rid in chosen)


@st.fragment(run_every=2.0 if live else None)
def charts():
    mine = {}
    for rid in chosen:
        tail = tails.setdefault(f"{root}::{rid}", new_tail())
        update_tail(tail, Run(root, rid))
        mine[rid] = tail
    for rid in chosen:
        p = views.progress(Run(root, rid))
        st.progress(p["fraction"], text=f"**{rid}** — {p['text']}")
        if p["error"]:
            st.error(p["error"])
    keys = present_keys(mine)
    if not keys:
        st.info("Waiting for the first loss row (data, source model and filter weights are prepared first).")
        return
    counts = point_counts(mine)
    st.caption("points read: " + ", ".join(f"{rid}: {n}" for rid, n in counts.items()))
    if many := thinned(mine):
        st.caption(f"Thinned for drawing: {', '.join(f'{rid} ({n:,} rows)' for rid, n in many.items())}. Each "
                   f"curve shows the lowest and the highest value in each of {MAX_POINTS // 2:,} equal step ranges "
                   f"(at most ~{MAX_POINTS:,} points, the last row always), so spikes stay visible; smoothing "
                   "uses every row.")
    cols = st.columns(2)
    for i, key in enumerate(keys + ["top1"]):
        cols[i % 2].plotly_chart(metric_figure(mine, key, smoothing=smoothing, log_y=log_y), key=f"loss.chart.{key}",
                                 width="stretch")


if chosen:
    charts()
