"""Start page: DFG's four networks and Algorithm 1 in short, and one button that starts the demo run."""
from pathlib import Path

import streamlit as st

from dfg import views
from dfg.presets import PRESET_NOTES
from pages._shared import page_context

root, _ = page_context()
st.title("Discriminative Feature Generation (DFG)")
st.markdown(
    "A classifier trained on **imbalanced** data sees few examples of its minority classes. DFG adds "
    "**generated features** for every class while the classifier trains — not generated images, but feature "
    "maps of the network's first block, shaped by a class-wise attention over its filters.")
st.image(str(Path(__file__).resolve().parent.parent / "assets" / "dfg_networks.png"),
         caption="The four networks and the filter-weight attention (paper Fig. 1, §3.2)")

left, right = st.columns(2)
with left:
    st.subheader("Four networks")
    st.markdown(
        "- **E, the extractor** — the backbone's first block (LeNet/VGG/ResNet), initialised from a model "
        "pre-trained on a large *source* dataset. Makes real features **E(x)**. Trained on L_E (Eq. 3).\n"
        "- **C, the classifier** — the rest of the backbone. Learns from real features (L_rC), generated ones "
        "(L_gC) and both concatenated (L_cC), mixed by α, β, γ (Eq. 4).\n"
        "- **G, the generator** — turns noise z and a label ŷ into a feature map **G(z, ŷ)**; each channel is "
        "scaled by that class's filter weight W*, so G only produces the channels that matter for ŷ.\n"
        "- **D, the critic** — tells real E(x) from generated G(z, ŷ) (WGAN-GP, Eq. 1); G learns to fool it "
        "(Eq. 2).")
with right:
    st.subheader("Algorithm 1 in five lines")
    st.markdown(
        "1. Start E and C from the source model; compute W(E_S), the source model's filter weights.\n"
        "2. Every step: update D **nD** times on real vs generated features, then G once.\n"
        "3. Every **nC1** steps: also update G so C classifies real ⊕ generated features correctly (Eq. 4c).\n"
        "4. Every step: update E (Eq. 3) and C on real features; every **nC2** steps C on the full Eq. 4.\n"
        "5. Every **nW** steps: recompute W(E) and the attention W*.")
    st.subheader("The filter weights")
    st.markdown(
        "Drop filter *j* of E and measure how much C's loss rises on images of class *k*; a softmax over "
        "filters and a class mean give **W(k, j)** (rows average 1). The generator uses "
        "**W\\* = ρ·W(E_S) + (1−ρ)·W(E)**, with weights below **δ** set to 0 (that channel is switched off "
        "for that class). ρ keeps the source model's sparser view; the *Filter weights* page lets you move "
        "ρ and δ on a finished run.")

st.divider()
st.subheader("Try it: the offline demo")
st.markdown(f"**demo** — {PRESET_NOTES['demo']}. Nothing is downloaded. The run trains in its own process: "
            "close the tab or restart the app and it keeps going.")
try:
    overrides = views.demo_overrides()
except ValueError as e:  # a malformed DFG_DEMO_OVERRIDES: the button below says it again when clicked
    overrides = None
    st.error(f"{views.DEMO_OVERRIDES_ENV}: {e}")
if overrides:
    st.caption(f"{views.DEMO_OVERRIDES_ENV} is set: {overrides}")
if st.button("Start the demo run", type="primary", icon=":material/play_arrow:"):
    try:  # a runs folder that cannot be made, a data root that cannot be read, a bad override
        run = views.start_demo(root, st.session_state.get("data_root", views.default_data_root()))
    except (ValueError, RuntimeError, OSError) as e:
        st.error(f"Not started: {e}", icon=":material/error:")
    else:
        st.session_state["run_id"] = run.id
        st.switch_page("pages/losses.py", query_params={"run": run.id})
