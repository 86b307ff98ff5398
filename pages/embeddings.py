"""Feature embeddings page (paper Fig. 2): the checkpoint's real features E(x) and generated G(z, ŷ) in 2-D
with PCA, t-SNE or UMAP, coloured by class and by real/generated; hover a real point to see its image."""
import streamlit as st

from dfg.embeddings import embed_run
from dfg.projections import prewarm_umap_in_background
from dfg.runstore import Run
from dfg.views_inspect import checkpoint_stamp, embedding_caption, embedding_chart, embedding_summary, has_checkpoint
from pages._shared import page_context

root, run_id = page_context()
st.title("Feature embeddings: real vs generated")
if not run_id or not has_checkpoint(Run(root, run_id)):
    st.info(f"{run_id} has no checkpoint yet: a run writes one every ckpt_every steps and when it stops. Wait, or "
            "pick another run in the sidebar." if run_id else "Pick a run in the sidebar.")
    st.stop()

prewarm_umap_in_background()  # numba compiles UMAP while the user looks at PCA
c = st.columns([2, 2, 3])
projection = c[0].radio("Projection", ["pca", "tsne", "umap"], horizontal=True, key="emb.method",
                        format_func={"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}.get)
n = c[1].select_slider("Points of each kind", [100, 200, 300, 500, 1000], value=300, key="emb.n",
                       help="n real test images (class-balanced; all of them when the test set is smaller) and "
                            "as many generated features")
c[2].caption("t-SNE and UMAP take seconds to tens of seconds the first time (2 × 1,000 LeNet features: ~6 s and "
             "~14 s on an idle core, `bench/embeddings_speed.py`; more on a busy one); results are cached per run, "
             "checkpoint, projection and size.")


@st.cache_data(show_spinner=False, max_entries=24)
def embed(root: str, run_id: str, stamp: int, projection: str, n: int) -> dict:
    """Cached per run id + checkpoint (its file stamp changes with every new checkpoint) + projection + n."""
    bar = st.progress(0.0, text="restoring the run...")
    out = embed_run(Run(root, run_id), method=projection, n=n, images=True,
                    progress=lambda f, msg: bar.progress(min(max(f, 0.0), 1.0), text=msg))
    bar.empty()
    return out


try:
    result = embed(root, run_id, checkpoint_stamp(Run(root, run_id)), projection, n)
except (ValueError, RuntimeError) as e:
    st.error(f"Could not embed {run_id}: {e}")
    st.stop()
st.caption(embedding_summary(result))
st.altair_chart(embedding_chart(result), key="emb.chart")
st.caption(embedding_caption(result))
