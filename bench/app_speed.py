"""App responsiveness: (a) a ρ/δ slider move on the Filter-weights page — W* recomputed from the stored
weights, the three heatmaps and Figure 5 built, server side (dfg.views_weights, what the page calls) —
median over 50 moves, target < 100 ms; (b) the Start page's demo button — time from the click
(dfg.views.start_demo: config check, run folder, worker launch) to the first loss row in metrics.jsonl,
with the demo preset's real settings, target < 10 s on this CPU. (b) is measured twice: with the source
model already cached in the data root ("warm", every click after the first) and with an empty data root
("cold", the very first click, which pre-trains the source model).

    python bench/app_speed.py [--skip-cold]

Last line: slider_ms=<median> slider_uncached_ms=<median, files re-read> first_point_s=<warm> first_point_cold_s=<cold or nan>
first_point_worker_cpu_s=<worker CPU seconds until the first row, warm>"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dfg import views  # noqa: E402
from dfg.runstore import Run  # noqa: E402
from dfg.views_weights import weight_view  # noqa: E402


def tiny_run(root: Path, data_root: Path) -> Run:
    """A short real DFG run with filter weights recorded at steps 0, 10, 20 (the slider's input)."""
    cmd = [sys.executable, "-m", "dfg", "train", "--preset", "demo", "--runs-dir", str(root), "--run-id", "bench",
           "--set", f"data_root={data_root}"]
    for s in ("steps=20", "n_w=10", "pretrain_steps=50", "head_refit_steps=10", "eval_every=10", "ckpt_every=10",
              "log_every=5", "limit_test=200"):
        cmd += ["--set", s]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return Run(root, "bench")


def slider_ms(run: Run, moves: int = 50, cached: bool = True) -> float:
    """Median ms of the page's server-side work for one slider move: the stored weights (weight_history),
    the δ slider's top, W* and the three heatmaps, and Figure 5 for the default filters, each figure
    serialised as st.plotly_chart does. cached=False reads every weight file again at each move (the page
    before weight_history kept them)."""
    from dfg import views_weights
    from dfg.views_weights import delta_max, figure5, weight_history

    rng = np.random.default_rng(0)
    history, _ = weight_history(run)
    step = sorted(history)[-1]
    weight_view(run, step, 0.75, 0.95, history[step])  # first call imports plotly's figure machinery
    times = []
    for _ in range(moves):
        rho, delta = float(rng.uniform(0, 1)), float(rng.uniform(0.5, 1.5))
        if not cached:
            views_weights._LOADED.clear()
        t = time.perf_counter()
        history, _ = weight_history(run)
        delta_max(history, 0.95)
        view = weight_view(run, step, rho, delta, history[step])
        for fig in (view["w_source"], view["w_target"], view["w_star"], figure5(run, view["representative"], history)):
            fig.to_json()  # what st.plotly_chart serialises for the browser
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def cpu_seconds(pid: int) -> float:
    """user + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def first_point_s(root: Path, data_root: Path, timeout: float = 600.0) -> tuple[float, float, float]:
    """(wall s from click to first loss row, of which in the app's click handler, worker CPU s by then) of
    one demo run with the real demo settings; the run is stopped right after. The worker's CPU seconds do
    not depend on how busy the machine is, the wall time does."""
    os.environ.pop(views.DEMO_OVERRIDES_ENV, None)
    t = time.perf_counter()
    run = views.start_demo(root, str(data_root))
    click = time.perf_counter() - t
    pid = int((run.path / "worker.pid").read_text())
    try:
        offset = 0
        while time.perf_counter() - t < timeout:
            rows, offset = run.read_metrics(offset)
            if any(r.get("kind") == "train" for r in rows):
                return time.perf_counter() - t, click, cpu_seconds(pid)
            state = run.status().get("state")
            if state not in ("created", "running"):
                raise RuntimeError(f"demo run ended as {state}: {run.status().get('error')} (see {run.path}/log.txt)")
            time.sleep(0.05)
        raise TimeoutError(f"no loss row within {timeout} s")
    finally:
        views.stop_run(run)
        for _ in range(600):  # wait for the worker to checkpoint and exit, so it does not skew the next timing
            if run.status().get("state") not in ("created", "running"):
                break
            time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-cold", action="store_true", help="skip the first-ever click (source pre-training)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = tiny_run(tmp / "runs", tmp / "data_tiny")
        ms, uncached = slider_ms(run), slider_ms(run, cached=False)
        print(f"(a) slider move -> W*, 3 heatmaps and Figure 5: median {ms:.1f} ms over 50 moves (target < 100 ms); "
              f"{uncached:.1f} ms reading the weight files at every move")
        cold = float("nan")
        if not args.skip_cold:
            cold, click, cpu = first_point_s(tmp / "demo_runs_cold", tmp / "data_demo")
            print(f"(b) demo click -> first loss row, empty data root (pre-trains the source): {cold:.1f} s "
                  f"(click handler {click:.2f} s, worker CPU {cpu:.1f} s)")
        warm_root = tmp / "data_demo"
        if args.skip_cold:  # fill the source cache first, untimed
            first_point_s(tmp / "demo_runs_fill", warm_root)
        warm, click, cpu = first_point_s(tmp / "demo_runs_warm", warm_root)
        print(f"(b) demo click -> first loss row, source cached: {warm:.1f} s (target < 10 s; click handler "
              f"{click:.2f} s, worker CPU {cpu:.1f} s)")
        print(f"cpu_cores={os.cpu_count()} load_1min={os.getloadavg()[0]:.2f} (other processes slow (b) down)")
    print(f"slider_ms={ms:.1f} slider_uncached_ms={uncached:.1f} first_point_s={warm:.2f} first_point_cold_s={cold:.2f} "
          f"first_point_worker_cpu_s={cpu:.1f}")


if __name__ == "__main__":
    main()
