"""Embedding page speed: features of n real + n generated points of a tiny real DFG run (LeNet, demo
preset; made in a temp dir unless --run DIR), then PCA, t-SNE (openTSNE 1 vs 2 threads, sklearn as a
reference), UMAP (first call, with numba compilation, and warm) and embed_run's cache hits.

    python bench/embeddings_speed.py [--run RUNS_DIR/RUN_ID] [--n 1000] [--repeats 3]
Last line: pca_s=… tsne_s=… tsne_2jobs_s=… tsne_sklearn_s=… umap_first_s=… umap_s=… cache_hit_ms=… …"""
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dfg import embeddings as emb  # noqa: E402
from dfg import projections  # noqa: E402
from dfg.restored import restore_cached  # noqa: E402
from dfg.runstore import Run  # noqa: E402


CPU: dict[str, float] = {}  # CPU seconds of the last timed() call: ≈ wall time on an idle box for 1-thread work


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall seconds of `repeats` calls, and the last result (median CPU seconds in CPU["last"])."""
    times, cpus, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    CPU["last"] = statistics.median(cpus)
    return statistics.median(times), out


def make_run(base: Path) -> Run:
    cmd = [sys.executable, "-m", "dfg", "train", "--preset", "demo", "--runs-dir", str(base / "runs"),
           "--run-id", "bench", "--set", f"data_root={base / 'data'}"]
    for s in ("steps=40", "pretrain_steps=50", "head_refit_steps=10", "eval_every=40", "ckpt_every=40",
              "log_every=10"):
        cmd += ["--set", s]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return Run(base / "runs", "bench")


def sklearn_tsne(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE
    x50 = projections.pca(x, projections.PRE_PCA, seed)
    return TSNE(perplexity=30.0, init="pca", random_state=seed).fit_transform(x50)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="an existing run folder RUNS_DIR/RUN_ID (default: train a tiny one)")
    ap.add_argument("--n", type=int, default=1000, help="real and generated points each")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"cpus={os.cpu_count()} load1={os.getloadavg()[0]:.1f}")
    tmp = tempfile.TemporaryDirectory()
    if args.run:
        run = Run(Path(args.run).parent, Path(args.run).name)
    else:
        t = time.perf_counter()
        run = make_run(Path(tmp.name))
        print(f"tiny run trained in {time.perf_counter() - t:.1f} s")
    restore_s, (_, data, method, step) = timed(lambda: restore_cached(run), 1)
    feat_s, fs = timed(lambda: emb.collect_features(method, data, n_real=args.n, n_fake=args.n), 1)
    x = fs.features
    print(f"restore {restore_s:.2f} s; features {x.shape} (real {fs.is_real.sum()}) in {feat_s:.2f} s")
    metrics_s, metrics = timed(lambda: emb.feature_metrics(fs), 1)
    print(f"feature_metrics {metrics_s:.2f} s ({CPU['last']:.2f} s CPU): {metrics}")
    r, cpu = {}, {}
    r["pca_s"], _ = timed(lambda: emb.project(x, "pca"), args.repeats)
    cpu["pca_s"] = CPU["last"]
    r["tsne_s"], a = timed(lambda: emb.project(x, "tsne", n_jobs=1), args.repeats)
    cpu["tsne_s"] = CPU["last"]
    r["tsne_2jobs_s"], b = timed(lambda: emb.project(x, "tsne", n_jobs=2), 1)
    cpu["tsne_2jobs_s"] = CPU["last"]
    print(f"openTSNE 1 vs 2 threads give the same map: {np.array_equal(a, b)}; "
          f"1 thread twice: {np.array_equal(a, emb.project(x, 'tsne', n_jobs=1))}")
    r["tsne_sklearn_s"], _ = timed(lambda: sklearn_tsne(x, 0), 1)
    cpu["tsne_sklearn_s"] = CPU["last"]
    r["umap_first_s"], _ = timed(lambda: emb.project(x, "umap"), 1)  # includes numba JIT (partly disk-cached)
    cpu["umap_first_s"] = CPU["last"]
    r["umap_s"], _ = timed(lambda: emb.project(x, "umap"), args.repeats)
    cpu["umap_s"] = CPU["last"]
    emb.clear_cache()
    r["embed_run_pca_s"], _ = timed(lambda: emb.embed_run(run, "pca", n=args.n, disk_cache=False), 1)
    hit_s, res = timed(lambda: emb.embed_run(run, "pca", n=args.n, disk_cache=False), 20)
    assert res["cache"] == "memory"
    r["cache_hit_ms"] = hit_s * 1e3
    emb.clear_cache()  # else the next call is a memory hit and writes nothing to disk
    emb.embed_run(run, "pca", n=args.n)  # computes the entry and writes it to disk
    disk_s, res = timed(lambda: (emb.clear_cache(), emb.embed_run(run, "pca", n=args.n))[1], args.repeats)
    assert res["cache"] == "disk"
    r["disk_hit_ms"] = disk_s * 1e3
    r["hover_images_s"], _ = timed(lambda: emb.hover_images(data, fs.index), 1)
    for k, v in r.items():
        print(f"{k:>16}: {v:8.3f} wall" + (f"  {cpu[k]:8.3f} cpu" if k in cpu else ""))
    print(f"load1 at the end: {os.getloadavg()[0]:.1f} (wall times above grow with other processes' load; "
          "CPU seconds do not)")
    print(" ".join(f"{k}={v:.3f}" for k, v in r.items()) + " "
          + " ".join(f"{k[:-2]}_cpu_s={v:.3f}" for k, v in cpu.items()) + f" points={len(x)} dim={x.shape[1]}")


if __name__ == "__main__":
    main()
