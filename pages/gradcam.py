"""Grad-CAM page (paper Fig. 3-4): the same test images through Original, Fine-tuning, DELTA and DFG (and
DIFA+cMWGAN) checkpoints side by side, each map for the predicted class, with its label and confidence."""
import zlib

import streamlit as st

from dfg.gradcam import compare_runs
from dfg.paper import method_label
from dfg.runstore import Run, RunError
from dfg.views_inspect import (GRADCAM_METHODS, checkpoint_stamp, comparable_runs, gradcam_grid,
                                gradcam_layer_caption, image_order, majority_note)
from pages._shared import page_context

root, run_id = page_context()
st.title("Grad-CAM: where each method looks")
if not run_id:
    st.info("Pick a run in the sidebar: the page compares runs on its dataset.")
    st.stop()
try:
    selected = Run(root, run_id).config()
except RunError as e:
    st.error(f"{e}. Pick another run in the sidebar.")
    st.stop()
dataset = selected.get("dataset")
options = comparable_runs(root, selected)
st.caption(f"Runs with a checkpoint on **{dataset}** and the same test images as {run_id} (backbone, limit_test), "
           "one per method (newest first). Each map is for the class the run predicts.")
if selected.get("method") in GRADCAM_METHODS and run_id not in options[selected["method"]]:
    st.info(f"{run_id} has no checkpoint yet: its column offers the other {method_label(selected['method'])} runs.")
cols = st.columns(len(GRADCAM_METHODS))
chosen, picked = [], {}  # picked: run id -> the method column it was picked in
for col, m in zip(cols, GRADCAM_METHODS):
    ids = options[m]
    # keyed by the sidebar run (its pick preselects itself), the folder and the offered runs: a run that gets
    # its first checkpoint, or another folder with this id, offers its runs afresh instead of a stale "—"
    scope = zlib.crc32(repr((str(root), Run(root, run_id).identity(), ids)).encode())
    pick = col.selectbox(method_label(m), ["—"] + ids,
                         index=ids.index(run_id) + 1 if run_id in ids else 1 if ids else 0,
                         key=f"cam.{m}.{run_id}.{scope}")
    if pick != "—":
        chosen.append(pick)
        picked[pick] = m
c = st.columns([4, 2, 1])
first = chosen[0] if chosen else "the first run"
only = c[0].radio("Images", ["all", "minority", "misclassified"], horizontal=True, key="cam.only",
                  format_func={"all": "all", "minority": f"minority classes of {first}",
                               "misclassified": f"misclassified by {first}"}.get)
count = c[1].slider("How many", 2, 16, 6, key="cam.count")
seed = c[2].number_input("Image draw (seed)", 0, 10_000, 0, key="cam.seed", help="which test images are shown")
if not chosen:
    st.info("No run with a checkpoint for these methods on this dataset yet: train them on the Train page.")
    st.stop()
if note := majority_note([Run(root, i) for i in chosen]):  # same test images, other training data
    st.caption(note)


@st.cache_data(show_spinner=False, max_entries=8)
def cams(root: str, ids: tuple, stamps: tuple, only: str, count: int, seed: int) -> list:
    """Cached per runs + their checkpoints + filter + count + image draw."""
    bar = st.progress(0.0, text="restoring runs...")
    order = image_order(Run(root, ids[0]), seed)
    out = compare_runs([Run(root, i) for i in ids], order, only=only, limit=count,
                       progress=lambda f, msg: bar.progress(min(max(f, 0.0), 1.0), text=msg))
    bar.empty()
    return out


try:
    entries = cams(root, tuple(chosen), tuple(checkpoint_stamp(Run(root, i)) for i in chosen), only, count,
                   int(seed))
except (ValueError, RuntimeError, IndexError) as e:
    st.error(str(e))
    st.stop()
if not entries:
    st.info("No test image matches this filter.")
st.caption(gradcam_layer_caption(entries))
grid = gradcam_grid(entries)
if grid:  # which checkpoint each column shows: a run still training moves on between reruns
    cols = st.columns(1 + len(GRADCAM_METHODS))
    for cell in grid[0]["cells"]:
        cols[1 + GRADCAM_METHODS.index(picked[cell["run_id"]])].caption(f"{cell['run_id']}, step {cell['step']}")
for row in grid:
    cols = st.columns(1 + len(GRADCAM_METHODS))  # fixed grid: images keep their size whatever is picked
    cols[0].image(row["image"], caption=f"test #{row['index']}: true {row['label_name']}", width=120)
    for cell in row["cells"]:
        col = cols[1 + GRADCAM_METHODS.index(picked[cell["run_id"]])]  # under its method's heading
        col.image(cell["overlay"], caption=f"{cell['title']}: {cell['caption']}", width=120)
