"""Filter-weights page: W(E_S), W(E), W* at a recorded step; ρ and δ sliders recompute W* from the stored
weights at once (no retraining); the channels each class switches off; paper Figures 5 and 6."""
import pandas as pd
import streamlit as st

from dfg import views
from dfg.runstore import Run
from dfg.views_weights import (delta_max, figure5, figure5_steps, page_settings, rho_accuracy, rho_figure,
                               weight_history, weight_view)
from pages._shared import page_context

root, run_id = page_context()
st.title("Filter weights: ρ and δ")
if not run_id:
    st.info("No run selected: pick one in the sidebar.")
    st.stop()
run = Run(root, run_id)
# The widgets are keyed by run id; the same id in another runs folder, or a run deleted and made again, is
# another run: its sliders start from its own ρ and δ, not from the values chosen on the first one.
WIDGETS = [f"fw.{w}.{run_id}" for w in ("step", "rho", "delta", "filters")] + [
    f"fw.delta_top.{root}::{run_id}", f"fw.delta_last.{root}::{run_id}"]
scope = (str(root), run.identity())
if st.session_state.get(f"fw.scope.{run_id}", scope) != scope:
    for key in WIDGETS:
        st.session_state.pop(key, None)
st.session_state[f"fw.scope.{run_id}"] = scope
try:  # a hand-edited or damaged config.json: say so instead of a traceback
    rho0, delta0, method = page_settings(run)
except ValueError as e:
    st.error(f"{run_id}'s config.json cannot be used here ({e}); pick another run.")
    st.stop()
history, problems = weight_history(run)  # each file read once, reused across reruns
listed = run.filter_weight_steps()
if views.progress(run)["active"]:  # a training run records W(E) every nW steps: show new ones as they come
    @st.fragment(run_every=5.0)
    def follow_new_steps():
        if run.filter_weight_steps() != listed:
            st.rerun()  # the whole page, with the new step on the slider
    follow_new_steps()
for problem in problems:
    st.warning(f"{problem}; that step is left out.")
steps = sorted(history)
if not steps:
    st.info(f"{run_id} has no recorded filter weights yet (DFG records them at step 0 and every nW steps)."
            if method == "dfg" else f"{run_id} is a {method!r} run: only DFG runs record filter weights.")
    st.stop()
c = st.columns(3)
step = c[0].select_slider("Recorded step", steps, value=steps[-1], key=f"fw.step.{run_id}",
                          help="W(E) is recomputed every nW steps; each recompute is stored")
rho = c[1].slider("ρ", 0.0, 1.0, rho0, 0.05, key=f"fw.rho.{run_id}",
                  help="W = ρ·W(E_S) + (1−ρ)·W(E) (Eq. 7); 1 = the source model's weights only")
top_key, last_key = f"fw.delta_top.{root}::{run_id}", f"fw.delta_last.{root}::{run_id}"
st.session_state[top_key] = top = delta_max(history, delta0, st.session_state.get(top_key))  # moves rarely
delta = c[2].slider("δ", 0.0, top, min(st.session_state.get(last_key, delta0), top), 0.05,
                    key=f"fw.delta.{run_id}",  # a moved top makes a new widget: it starts at the user's δ
                    help="weights below δ are set to 0 (rows average 1)")
st.session_state[last_key] = delta
view = weight_view(run, step, rho, delta, history[step])
c = st.columns(3)
for col, name in zip(c, ["w_source", "w_target", "w_star"]):
    col.plotly_chart(view[name], key=f"fw.{name}", width="stretch")
if not view["config_reproduces"]:
    st.warning(f"{run_id}'s config.json (ρ={rho0:g}, δ={delta0:g} and its switches) does not give the W* recorded "
               f"at step {step}: it was probably edited after training. The sliders start from config.json's "
               "values; the recorded W* is under *W\\* values* below.", icon=":material/warning:")
if view["rho_ignored"]:
    st.caption(f"{run_id} trained with `official_discard_rho=true`: W* is W(E) thresholded at δ, and ρ does not "
               "change it (the official code's behaviour).")
elif view["matches_recorded"]:
    st.caption("ρ and δ are the run's own: W* equals the one recorded during training.")
else:
    st.caption(f"W* recomputed from the stored W(E_S) and W(E) for ρ={rho:.2f}, δ={delta:.2f} "
               f"(the run trained with ρ={rho0:g}, δ={delta0:g}).")

st.subheader("Channels each class switches off")
st.dataframe(pd.DataFrame(view["deactivated"]), hide_index=True, key="fw.deactivated")
with st.expander("W* values"):
    names = [r["class"] for r in view["deactivated"]]
    columns = [f"f{j}" for j in range(view["w_star_values"].shape[1])]
    st.dataframe(pd.DataFrame(view["w_star_values"], index=names, columns=columns), key="fw.values")
    if not view["config_reproduces"]:
        st.caption(f"W* recorded during training at step {step}:")
        st.dataframe(pd.DataFrame(view["recorded_w_star"], index=names, columns=columns), key="fw.recorded")

st.subheader("Per-filter weight over classes (paper Fig. 5)")
filters = st.multiselect("Filters", list(range(view["num_filters"])), default=view["representative"],
                         format_func=lambda j: f"f{j}", key=f"fw.filters.{run_id}",
                         help="default: the two filters whose source weights differ most between classes")
if filters:
    st.plotly_chart(figure5(run, filters, history, selected=step), key="fw.fig5", width="stretch")
    shown = figure5_steps(steps, step)
    some = "" if len(shown) == len(steps) else (
        f" Showing {len(shown)} of the {len(steps)} recorded steps: evenly spaced, the first, the last and the "
        f"selected one (step {step}, thicker).")
    st.caption("ρ·W(E_S) + (1−ρ)·W(E) before the δ threshold, one line per recorded step (later = darker)."
               f"{some} Red: equality of all filters. The paper finds ρ=0 drifts to the line; ρ=0.75 keeps "
               "class structure.")

st.subheader("Accuracy vs ρ (paper Fig. 6)")
rows, left_out = rho_accuracy(root, run)
if rows:
    st.plotly_chart(rho_figure(rows), key="fw.fig6", width="stretch")
    st.dataframe(pd.DataFrame(rows), hide_index=True)
else:
    st.info(f"Needs finished DFG runs of {run_id}'s setting (its preset, and its values of every setting but ρ "
            "and the seed) with at least two values of ρ — e.g. `python -m dfg sweep` over rho, or several "
            "runs from the Train page.")
if left_out:
    st.caption(left_out)
