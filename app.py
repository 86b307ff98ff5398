"""DFG Explorer — `streamlit run app.py`. The router (st.navigation over pages/) and the shared sidebar:
runs folder, the selected run (also in the URL as ?run=<id>, so any page can be opened on a run), device."""
import streamlit as st

from dfg import views
from dfg.runstore import Run, list_runs

st.set_page_config(page_title="DFG Explorer", page_icon=":material/hub:", layout="wide")

PAGES = [
    st.Page("pages/start.py", title="How DFG works", icon=":material/school:", default=True),
    st.Page("pages/train.py", title="Train", icon=":material/play_circle:"),
    st.Page("pages/losses.py", title="Live losses", icon=":material/monitoring:"),
    st.Page("pages/filter_weights.py", title="Filter weights (ρ, δ)", icon=":material/grid_on:"),
    st.Page("pages/embeddings.py", title="Feature embeddings", icon=":material/scatter_plot:"),
    st.Page("pages/gradcam.py", title="Grad-CAM", icon=":material/image_search:"),
    st.Page("pages/results.py", title="Results", icon=":material/table_chart:"),
]
page = st.navigation(PAGES)


@st.cache_resource
def device_label() -> str:
    return views.device_info()["label"]


with st.sidebar:
    root = views.runs_folder(st.text_input("Runs folder", value=views.default_runs_dir(), key="runs_dir",
                                           help="every run is a folder here; set DFG_RUNS_DIR to change the default"))
    st.text_input("Data root", value=views.default_data_root(), key="data_root",
                  help="datasets and cached source models (DFG_DATA_ROOT)")
    runs = list_runs(root)
    ids = [r.id for r in runs]
    # Keyed, so the widget stays the same while the list changes under a live run.
    wanted = st.query_params.get("run")
    if wanted in ids and wanted != st.session_state.get("sidebar.url"):  # a link (or another page) chose it
        st.session_state["sidebar.run"] = wanted
    if st.session_state.get("sidebar.run") not in ids:  # first visit, other folder, deleted run
        st.session_state["sidebar.run"] = ids[0] if ids else None
    # The options show the bare id: Streamlit keeps a selectbox's value as its shown text, so a label with a
    # live step ("running 380/600") would stop matching once the step moves and the pick would be lost.
    selected = st.selectbox("Run", ids, key="sidebar.run", placeholder="no runs yet",
                            help="the run every page shows; newest first")
    if selected:
        st.caption(views.run_label(Run(root, selected)).split(" · ", 1)[-1])
    st.session_state["run_id"] = st.session_state["sidebar.url"] = selected
    if selected:
        st.query_params["run"] = selected
    elif "run" in st.query_params:
        del st.query_params["run"]
    st.caption(f"Device: {device_label()}")

page.run()
