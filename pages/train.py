"""Train page: the run's settings (preset → method → fields), validated by dfg.config.make_config with the
error shown next to the field it names; Start launches a background worker; every run's progress below."""
import streamlit as st

from dfg import views
from dfg.config import CHOICES, FIELD_TYPES, OFFICIAL_SWITCHES, field_docs
from dfg.presets import PRESET_NOTES, PRESETS
from dfg.data import DATASETS
from dfg.methods import METHODS
from dfg.networks import BACKBONES
from dfg.runstore import Run, list_runs
from pages._shared import page_context

root, _ = page_context()
HELP = field_docs()

st.title("Train a run")
top = st.columns([1, 1, 2])
preset = top[0].selectbox("Preset", list(PRESETS), key="train.preset", help="the paper's settings per dataset")
method = top[1].selectbox("Method", list(METHODS), index=list(METHODS).index("dfg"), key="train.method",
                          help="DFG or a baseline of Table 2")
top[2].caption(PRESET_NOTES[preset])
defaults = views.form_defaults(preset, method)
prefix = f"train.{preset}.{method}."  # new defaults whenever the preset or method changes
values = {"method": method, "data_root": st.session_state.get("data_root", views.default_data_root())}
error_slots = {}


def field(where, name, label, kind="number", **kw):
    """One widget for config field `name`, followed by an empty slot where its ConfigError appears."""
    key, d = prefix + name, defaults[name]
    if kind == "select":
        options = kw.pop("options")
        values[name] = where.selectbox(label, options, index=options.index(d) if d in options else 0, key=key,
                                       help=HELP.get(name), **kw)
    elif kind == "check":
        values[name] = where.checkbox(label, value=bool(d), key=key, help=HELP.get(name))
    elif kind == "text":
        values[name] = where.text_input(label, value=str(d), key=key, help=HELP.get(name), **kw)
    elif FIELD_TYPES[name] is int:  # the field's type, not the preset value's (ratio=40 is a float field)
        values[name] = where.number_input(label, value=int(d), step=1, key=key, help=HELP.get(name), **kw)
    else:
        values[name] = where.number_input(label, value=float(d), key=key, help=HELP.get(name),
                                          step=kw.pop("step", 0.05), format=kw.pop("format", "%.3f"), **kw)
    error_slots[name] = where.empty()


st.subheader("Model and data")
c = st.columns(4)
field(c[0], "backbone", "Backbone", "select", options=list(BACKBONES))
targets = [n for n, s in DATASETS.items() if s.role in ("target", "both")]
field(c[1], "dataset", "Target dataset", "select", options=targets,
      format_func=lambda n: n + ("" if DATASETS[n].offline else " (needs files)"))
sources = [n for n, s in DATASETS.items() if s.role in ("source", "both")] + ["imagenet"]
field(c[2], "source", "Source dataset (pre-training)", "select", options=sources)
field(c[3], "device", "Device", "select", options=views.device_info()["choices"])
if values["dataset"] == "folder":
    c = st.columns([3, 1, 1])
    field(c[0], "folder", "Your image folder (<folder>/<class>/<image>)", "text")
    field(c[1], "image_size", "Image size (0 = backbone's)")
    field(c[2], "grayscale", "Grayscale (for LeNet)", "check")
c = st.columns(4)
field(c[0], "imbalance", "Imbalance", "select", options=list(CHOICES["imbalance"]))
field(c[1], "ratio", "Ratio n_max / n_min", step=1.0, format="%.1f")
field(c[2], "num_majority", "Majority classes (how many)")
values["majority"] = c[3].text_input("Fixed majority classes (e.g. 4,8)", key=prefix + "majority",
                                     value=",".join(map(str, defaults["majority"])), help=HELP.get("majority"),
                                     placeholder="seeded draw")
error_slots["majority"] = c[3].empty()

st.subheader("DFG (Algorithm 1)")
c = st.columns(5)
field(c[0], "rho", "ρ (Eq. 7 blend)")
field(c[1], "delta", "δ (threshold on W)")
field(c[2], "alpha", "α (L_rC)")
field(c[3], "beta", "β (L_gC)")
field(c[4], "gamma", "γ (L_cC)")
c = st.columns(5)
field(c[0], "n_critic", "nD (critic updates)")
field(c[1], "n_c1", "nC1")
field(c[2], "n_c2", "nC2")
field(c[3], "n_w", "nW (recompute W)")
field(c[4], "gp_lambda", "λ (gradient penalty)", step=1.0, format="%.1f")
st.subheader("Optimisation and schedule")
c = st.columns(4)
for col, (name, label) in zip(c, [("lr_extractor", "ηE"), ("lr_classifier", "ηC"), ("lr_generator", "ηG"),
                                  ("lr_critic", "ηD")]):
    field(col, name, f"{label} learning rate", step=1e-5, format="%.1e")
c = st.columns(4)
field(c[0], "steps", "Steps")
field(c[1], "batch_size", "Batch size m")
field(c[2], "seed", "Seed")
field(c[3], "eval_every", "Evaluate every")
with st.expander("Official-code switches (all off = the paper; README → Official-code switches)"):
    c = st.columns(2)
    for i, name in enumerate(OFFICIAL_SWITCHES):
        field(c[i % 2], name, HELP.get(name, name), "check")
with st.expander("More settings"):
    c = st.columns(4)
    for i, name in enumerate(["pretrain_steps", "head_refit_steps", "limit_test", "n_max", "fw_per_class",
                              "log_every", "ckpt_every", "threads"]):
        field(c[i % 4], name, name)
    c = st.columns(4)
    field(c[0], "tf32", "TF32 on CUDA (faster; ~1e-3 relative error)", "check")
    field(c[1], "deterministic", "deterministic CUDA kernels (exact repeats)", "check")
    field(c[2], "cuda_graphs", "CUDA graphs (each step one replay; same numbers)", "check")
    c = st.columns(4)
    field(c[0], "val_fraction", "val_fraction")
    field(c[1], "transfer_reg", "transfer_reg", "select", options=list(CHOICES["transfer_reg"]))
    field(c[2], "optimizer_ec", "optimizer_ec", "select", options=list(CHOICES["optimizer_ec"]))
    field(c[3], "download", "download missing datasets", "check")
    c = st.columns(4)
    field(c[0], "head_refit", "source head re-fit (auto: when the classes differ)", "select",
          options=list(CHOICES["head_refit"]))
    field(c[1], "source_per_class", "source images per class (0 = all)")
    field(c[2], "difa_level", "DIFA+cMWGAN generates (fc: C's last-layer input, as refs [14, 15])", "select",
          options=list(CHOICES["difa_level"]))
    field(c[3], "difa_phase_fraction", "DIFA+cMWGAN phase fraction")
    c = st.columns(4)
    field(c[0], "short_classes", "a class with fewer images than asked (all: keeps what it has)", "select",
          options=list(CHOICES["short_classes"]))
    field(c[1], "start_head", "head E/C start from (random: a fresh last layer, as for ResNet-50)", "select",
          options=list(CHOICES["start_head"]))
    field(c[2], "delta_layers", "maps DELTA's regulariser compares (auto: ResNet-50's 4 stages, else E's)",
          "select", options=list(CHOICES["delta_layers"]))
    field(c[3], "frozen_bn", "BN layers that do not train (eval: frozen with their running statistics)",
          "select", options=list(CHOICES["frozen_bn"]))
    run_id = st.text_input("Run id (empty = time-preset-method-seed)", key="train.run_id")

cfg, bad_field, message = views.build_config(preset, values)
if cfg is None:
    (error_slots[bad_field] if bad_field in error_slots else st).error(message, icon=":material/error:")
else:  # a value moved from its default that this method never reads: say so before a run is started with it
    for note in views.form_notes(cfg, values, defaults):
        st.info(note, icon=":material/info:")
if busy := views.all_core_runs(root):
    st.warning(f"{', '.join(busy)} trains on every core (threads=0). A run started now gets 1 thread, and the "
               "two slow each other down sharply (the first by ~20× on 2 cores): stop it first, or give each run "
               "threads=1 (or fewer threads than cores in all).", icon=":material/speed:")
if st.button("Start training", type="primary", icon=":material/play_arrow:", key="train.start"):
    if cfg is None:
        st.error(f"Not started — fix the setting first: {message}")
    else:
        try:
            run = views.start_run(cfg, root, run_id.strip() or None)
        except (ValueError, RuntimeError, OSError) as e:  # taken run id, missing data files, no CUDA...
            st.error(f"Not started: {e}")
        else:  # the sidebar (drawn before this page) must list and select the new run: draw all of it again
            st.session_state["run_id"] = run.id
            st.query_params["run"] = run.id
            st.session_state["train.flash"] = f"Started {run.id} in the background."
            st.rerun()

st.subheader("Runs")
runs = list_runs(root)


@st.fragment(run_every=2.0 if any(views.progress(r)["active"] for r in runs) else None)
def job_list():
    if flash := st.session_state.pop("train.flash", None):
        st.toast(flash)
    shown, hidden = views.listed_runs(list_runs(root))
    for run, p in shown:
        row = st.columns([6, 1, 1])
        row[0].progress(p["fraction"], text=f"**{run.id}** — {p['text']}")
        if p["error"]:
            row[0].caption(f":red[{p['error']}]")
        if p["active"] and row[1].button("Stop", key=f"stop.{run.id}", icon=":material/stop:"):
            views.stop_run(run)
            st.toast(f"Asked {run.id} to checkpoint and stop")
        if p["resumable"] and row[2].button("Resume", key=f"resume.{run.id}", icon=":material/replay:"):
            try:
                views.resume_run(Run(root, run.id))
                st.session_state["train.flash"] = f"Resumed {run.id} from its last checkpoint"
                st.rerun()  # the whole page: the list polls only when a full run sees an active run
            except ValueError as e:  # still running
                st.error(str(e))
    if hidden:
        st.caption(f"{hidden} more run{'s' if hidden > 1 else ''}, older and neither active nor resumable, not "
                   f"listed; `python -m dfg runs --runs-dir {root}` lists every run.")
    if not runs:
        st.caption("No runs yet in this folder.")


job_list()
