"""Embeddings and Grad-CAM pages: which runs can be compared, the paper's Figure 2 as two linked scatter
plots (by class, by real/generated; hovering a real point shows its image) and the Grad-CAM grid."""
from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd

from .data import DATASETS
from .paper import method_label
from .runstore import Run, list_runs, readable_runs

GRADCAM_METHODS = ("original", "finetune", "delta", "dfg", "difa_cmwgan")  # Fig. 3-4's columns, then DIFA+cMWGAN
# config fields that decide the test images a run is evaluated on (with the dataset): runs that differ in one
# cannot be compared image by image
TEST_SET_FIELDS = ("dataset", "backbone", "limit_test", "image_size", "grayscale", "folder")


def has_checkpoint(run: Run) -> bool:
    return run.checkpoint_path.exists()


def checkpoint_stamp(run: Run) -> tuple:
    """Changes whenever the worker writes a new checkpoint, or config.json changes (a hand edit, a run made
    again under the id): part of the app's cache keys, so a page never serves a result the run's files no
    longer give (an edited config.json is then refused by the restore)."""
    def stamp(path):
        try:
            return path.stat().st_mtime_ns
        except OSError:
            return 0
    return stamp(run.checkpoint_path), stamp(run.path / "config.json")


def points_frame(result: dict) -> pd.DataFrame:
    """embed_run's points as a table with the tooltip's columns; `image` holds a PNG data-URI for real
    points (vega-tooltip draws a field named `image` as a picture) and is empty for generated ones."""
    p = result["points"]
    df = pd.DataFrame({"x": p["x"], "y": p["y"], "class": p["class_name"], "kind": p["kind"],
                       "test index": p["index"]})
    if "image" in p:
        df["image"] = p["image"]
    return df


def embedding_chart(result: dict, size: int = 360) -> alt.HConcatChart:
    """Paper Fig. 2 as one chart of two panels over the same 2-D points: coloured by class (left) and by
    real/generated (right); real points are circles, generated ones crosses. A box dragged on the left
    highlights the same points in both; hovering a real point shows its test image."""
    df = points_frame(result)
    tooltip = ["image", "class", "kind", "test index"] if "image" in df else ["class", "kind", "test index"]
    brush = alt.selection_interval(encodings=["x", "y"])
    base = alt.Chart(df).mark_point(filled=True, size=40, opacity=0.75).encode(
        x=alt.X("x:Q", axis=None), y=alt.Y("y:Q", axis=None), tooltip=tooltip,
        shape=alt.Shape("kind:N", scale=alt.Scale(domain=["real", "generated"], range=["circle", "cross"]),
                        legend=None),  # the caption says circles are real, crosses generated
    ).properties(width=size, height=size)
    by_class = base.encode(color=alt.condition(brush, alt.Color("class:N", scale=alt.Scale(scheme="tableau10")),
                                               alt.value("lightgray"))).add_params(brush).properties(
        title="coloured by class (drag a box here)")
    by_kind = base.encode(color=alt.condition(
        brush, alt.Color("kind:N", title="real / generated",
                         scale=alt.Scale(domain=["real", "generated"], range=["#1f77b4", "#ff7f0e"])),
        alt.value("lightgray"))).properties(title="real vs generated")
    kinds = " and generated G(z, ŷ)" if result.get("has_generator", True) else ""
    return alt.hconcat(by_class, by_kind).resolve_scale(color="independent").properties(
        title=f"{result['method'].upper()} of real {result.get('feature_name', 'E(x)')}{kinds} features")


def embedding_summary(result: dict) -> str:
    """One line: how many points, the checkpoint step and the two feature scores."""
    m = result.get("metrics") or {}
    n_real = sum(k == "real" for k in result["points"]["kind"])
    n_fake = len(result["points"]["kind"]) - n_real
    text = f"{n_real} real and {n_fake} generated features, checkpoint step {result['step']}"
    if m.get("knn_label_agreement") is not None:
        text += (f" · generated features whose {m['k']} nearest real neighbours share their label: "
                 f"{m['knn_label_agreement']:.0%} · real/generated separability (0.5 = indistinguishable; a "
                 f"logistic regression on {m.get('separability_dims', 50)} principal components): "
                 f"{m['separability']:.2f} · G samples in eval mode (BatchNorm's running statistics)")
        if m.get("negative_generated"):
            text += (f" · real features are never negative (they follow a ReLU), but {m['negative_generated']:.0%} "
                     "of generated values are (G ends with BatchNorm, Table A.4): that alone makes them separable")
    elif not result.get("has_generator"):
        text += " · this method has no generator: real features only"
    return text


def comparable_runs(root: str | Path, like: dict | str) -> dict[str, list[str]]:
    """{method: ids of runs with a checkpoint and the same test set as the run config `like` (dataset,
    backbone, limit_test, ...: TEST_SET_FIELDS, and the seed when limit_test draws a seeded subset or the
    dataset draws its split per seed), newest first} for the Grad-CAM columns. A dataset name alone matches
    on the dataset only."""
    like = {"dataset": like} if isinstance(like, str) else like
    fields = [f for f in TEST_SET_FIELDS if f in like]
    seeded = like.get("limit_test") or getattr(DATASETS.get(like.get("dataset")), "seeded_split", False)
    out: dict[str, list[str]] = {m: [] for m in GRADCAM_METHODS}
    for run in readable_runs(list_runs(root))[0]:  # a damaged config.json: not offered
        cfg = run.config()
        same_draw = not seeded or cfg.get("seed") == like.get("seed")  # a seeded cap, or a split drawn per seed
        if all(cfg.get(f) == like[f] for f in fields) and same_draw and cfg.get("method") in out \
                and has_checkpoint(run):
            out[cfg["method"]].append(run.id)
    return out


def majority_draws(runs: list[Run]) -> dict[tuple, list[str]]:
    """{majority classes a run trained with (data.json): the ids of those runs}; runs on one test set may
    still have trained on different imbalance draws (each seed draws its own)."""
    out: dict[tuple, list[str]] = {}
    for run in runs:
        majority = run.read_record("data.json").get("majority")
        out.setdefault(tuple(majority) if isinstance(majority, list) else (), []).append(run.id)
    return out


def majority_note(runs: list[Run]) -> str:
    """'' when the runs trained with one majority set, else a sentence naming each set and its runs."""
    draws = majority_draws(runs)
    if len(draws) < 2:
        return ""
    return "The picked runs trained with different majority classes: " + "; ".join(
        f"{', '.join(ids)}: {{{', '.join(map(str, m))}}}" for m, ids in draws.items()) + "."


def image_order(run: Run, seed: int) -> list[int] | None:
    """A seeded permutation of the run's test indices, so the first images shown mix all classes (the
    test set is stored class by class); None when the test size is not recorded yet."""
    import numpy as np

    from .views_results import last_eval

    ev = last_eval(run) or {}
    n = ev.get("n") or sum(sum(row) for row in ev.get("confusion") or [])
    if not n:  # no test evaluation yet: the test size data.json records per class
        counts = run.read_record("data.json").get("class_counts") or []
        n = sum(int(c.get("test") or 0) for c in counts if isinstance(c, dict))
    return np.random.default_rng(seed).permutation(int(n)).tolist() if n else None


def embedding_caption(result: dict) -> str:
    """What the two panels show, for this run: its feature name, and generated points only when it has a
    generator (with W* only for DFG's class-wise weights)."""
    feature = result.get("feature_name", "E(x)")
    text = f"Circles: real {feature} of test images (hover one to see it)"
    if result.get("has_generator"):
        weights = " with the run's W*" if result.get("weighted", feature == "E(x)") else ""
        text += f"; crosses: generated G(z, ŷ){weights}"
    return text + ". Drag a box on the left to highlight the same points in both panels."


def gradcam_layer_caption(entries: list[dict]) -> str:
    """Which maps the shown Grad-CAMs weigh and how coarse they are, one clause per distinct layer (runs of one
    backbone share it; DIFA+cMWGAN's C is the same network)."""
    seen: dict[tuple, list[str]] = {}
    for e in entries:
        names = seen.setdefault((e["layer"], e["map_size"], e["image_size"]), [])
        if method_label(e["method"]) not in names:
            names.append(method_label(e["method"]))
    clauses = [f"{layer}: {h}×{w} per image, upsampled bilinearly to {ih}×{iw}" + (f" ({', '.join(names)})"
               if len(seen) > 1 else "") for (layer, (h, w), (ih, iw)), names in seen.items()]
    return "Each map weighs " + "; ".join(clauses) + "." if clauses else ""


def gradcam_grid(entries: list[dict]) -> list[dict]:
    """compare_runs' flat list -> one row per image: {"index", "label_name", "image", "cells": [per run:
    {"title", "overlay", "caption", "correct"}]} in the order the runs were given."""
    rows: dict[int, dict] = {}
    for e in entries:
        row = rows.setdefault(e["index"], {"index": e["index"], "label_name": e["label_name"], "image": e["image"],
                                           "cells": []})
        mark = "✓" if e["correct"] else "✗"
        row["cells"].append({"title": method_label(e["method"]), "overlay": e["overlay"], "correct": e["correct"],
                             "caption": f"{mark} {e['pred_name']} ({e['conf']:.0%})", "run_id": e["run_id"],
                             "step": e["step"]})
    return list(rows.values())
