"""App pages at scale: a small and a large synthetic runs folder (bench/synthetic_runs.py, seeded, in a temp
dir), and per page — Live losses and Filter weights on the big run, Results over all runs, Train's run list —
the time of a first render (a fresh session opening the page, sidebar included) and of a re-render, through
streamlit's AppTest; median over --repeats. For reference, a plain full read of the big run's files.

    python bench/app_scale.py [--rows 200000] [--weights 2000] [--runs 300] [--repeats 3]
The large folder has --runs runs, one of them with --rows metric rows and --weights filter-weight recomputes;
the small one has a hundredth of the rows and recomputes and a thirtieth of the runs.
Last line: <page>_small_s=… <page>_large_s=… <page>_ratio=… (first render), <page>_rerun_small_s=… (and
_large_s, _ratio) for page in live_losses, filter_weights, results, train; full_read_metrics_s=…
full_read_weights_s=… rows=… weights=… runs=…"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dfg import views_weights  # noqa: E402
from dfg.runstore import Run  # noqa: E402
from synthetic_runs import runs_folder  # noqa: E402

APP = str(REPO / "app.py")
# name in the output: (page file, the key of an element the page shows only when it rendered the big run)
PAGES = {"live_losses": ("losses", "loss.chart.L_D"), "filter_weights": ("filter_weights", "fw.fig5"),
         "results": ("results", "res.recall.big"), "train": ("train", "resume.big")}


@contextlib.contextmanager
def app_env(root: Path, data_root: Path):
    """The app's runs folder and data root (its sidebar defaults) set for the block, then put back."""
    old = {k: os.environ.get(k) for k in ("DFG_RUNS_DIR", "DFG_DATA_ROOT")}
    os.environ.update(DFG_RUNS_DIR=str(root), DFG_DATA_ROOT=str(data_root))
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def render(page: str, key: str) -> tuple[float, float]:
    """(first render s, re-render s) of one page in a new AppTest session, as a new browser tab opening the
    page's URL. Weight files the process kept from earlier renders are dropped first, so a first render of
    the Filter weights page reads them as a freshly started app does."""
    from streamlit.testing.v1 import AppTest

    # AppTest warns on every run that the test thread has no script context: expected there, and noise here
    logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context").setLevel(logging.ERROR)
    views_weights._LOADED.clear()
    at = AppTest.from_file(APP, default_timeout=600)
    times = []
    for go in (lambda: at.switch_page(f"pages/{page}.py").run(), at.run):
        t = time.perf_counter()
        go()
        times.append(time.perf_counter() - t)
        if at.exception:
            raise RuntimeError(f"{page}: {[e.value for e in at.exception]}")
        try:
            at.get_by_key(key)
        except KeyError:
            raise RuntimeError(f"{page} rendered without {key!r}: not the big run's page") from None
    return times[0], times[1]


def full_read(run: Run) -> tuple[float, float]:
    """Seconds to read the run's whole metrics.jsonl (json.loads of every line) and every filter-weight file:
    what the pages would do on every render without their offsets, thinning and caches."""
    t = time.perf_counter()
    with open(run.path / "metrics.jsonl", "rb") as f:
        rows = [json.loads(line) for line in f]
    metrics_s = time.perf_counter() - t
    assert rows, "the big run has no metric rows"
    t = time.perf_counter()
    for step in run.filter_weight_steps():
        run.load_filter_weights(step)
    return metrics_s, time.perf_counter() - t


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000, help="metric rows of the big run in the large folder")
    ap.add_argument("--weights", type=int, default=2000, help="its filter-weight recomputes")
    ap.add_argument("--runs", type=int, default=300, help="runs in the large folder")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    sizes = {"small": (max(1, args.rows // 100), max(1, args.weights // 100), max(1, args.runs // 30)),
             "large": (args.rows, args.weights, args.runs)}
    print(f"cpus={os.cpu_count()} load1={os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp, big = Path(tmp), {}
        for name, (rows, weights, runs) in sizes.items():
            t = time.perf_counter()
            big[name] = runs_folder(tmp / name, rows=rows, weights=weights, runs=runs)
            mb = (big[name].path / "metrics.jsonl").stat().st_size / 1e6
            print(f"{name}: {runs} runs; the big run {rows:,} metric rows ({mb:.1f} MB), {weights:,} weight "
                  f"files; built in {time.perf_counter() - t:.1f} s")
        times: dict[str, list[float]] = {}
        with app_env(tmp / "small", tmp / "data"):
            for page, key in PAGES.values():  # untimed: imports and streamlit's first runs
                render(page, key)
        for _ in range(args.repeats):  # small and large in turns: a change in the machine's load hits both
            for name in sizes:
                with app_env(tmp / name, tmp / "data"):
                    for label, (page, key) in PAGES.items():
                        first, again = render(page, key)
                        times.setdefault(f"{label}_{name}_s", []).append(first)
                        times.setdefault(f"{label}_rerun_{name}_s", []).append(again)
        reads = [full_read(big["large"]) for _ in range(args.repeats)]
    r = {k: statistics.median(v) for k, v in times.items()}
    out = {}
    print(f"{'page':<16}{'first render: small':>20}{'large':>9}{'ratio':>8}{'re-render: small':>19}{'large':>9}"
          f"{'ratio':>8}")
    for label in PAGES:
        row = []
        for kind in ("", "rerun_"):
            small, large = r[f"{label}_{kind}small_s"], r[f"{label}_{kind}large_s"]
            out.update({f"{label}_{kind}small_s": small, f"{label}_{kind}large_s": large,
                        f"{label}_{kind}ratio": large / small})
            row.append(f"{small:>{20 if not kind else 19}.3f}{large:>9.3f}{large / small:>7.1f}x")
        print(f"{label:<16}" + "".join(row))
    out["full_read_metrics_s"] = statistics.median(m for m, _ in reads)
    out["full_read_weights_s"] = statistics.median(w for _, w in reads)
    print(f"reference, the large folder's big run read whole: metrics.jsonl {out['full_read_metrics_s']:.2f} s "
          f"(json.loads per line), its {args.weights:,} weight files {out['full_read_weights_s']:.2f} s")
    print(f"median of {args.repeats}; load1 at the end: {os.getloadavg()[0]:.1f} (other processes slow every "
          "figure down)")
    rows, weights, runs = sizes["large"]
    print(" ".join(f"{k}={v:.4g}" for k, v in out.items()) + f" rows={rows} weights={weights} runs={runs}")


if __name__ == "__main__":
    main()
