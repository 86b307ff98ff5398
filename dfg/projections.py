"""2-D projections of feature sets for the Embeddings page: PCA, t-SNE (openTSNE) and UMAP, seeded, on one
BLAS thread, with UMAP's numba compile done ahead of the first view."""
from __future__ import annotations

import os
import sys
import warnings

import numpy as np

# UMAP compiles with numba, which (with colorama installed) swaps sys.stdout for a colouring wrapper and back
# around each compile. From the prewarm thread below that raced the main thread: a stream swapped in meanwhile
# (pytest's capsys, a redirect) was replaced by the one saved before it. Numba reads this switch when it is
# first imported, and only error-message colours depend on it.
os.environ.setdefault("NUMBA_DISABLE_ERROR_MESSAGE_HIGHLIGHTING", "1")


def _plain_numba_messages() -> bool:
    """When numba was imported before this module (by the user's own code), the switch above came too late:
    hand numba's error-message colouring a plain scheme instead, so that it no longer touches sys.stdout.
    Returns whether a scheme was replaced. Leaves numba alone if its internals are not the expected ones."""
    errors = sys.modules.get("numba.core.errors")
    base = getattr(errors, "_DummyColorScheme", None)  # None too when numba is not loaded
    if base is None or not hasattr(errors, "_termcolor_inst"):
        return False
    if type(errors.termcolor()).__name__ in ("NOPColorScheme", "PlainScheme"):  # already plain
        return False

    class PlainScheme(base):  # every markup returns the message unchanged, as numba's own no-op scheme does
        def code(self, msg): return msg
        def errmsg(self, msg): return msg
        def filename(self, msg): return msg
        def indicate(self, msg): return msg
        def highlight(self, msg): return msg
        def reset(self, msg): return msg

    errors._termcolor_inst = PlainScheme()
    return True


_plain_numba_messages()

PROJECTIONS = ("pca", "tsne", "umap")
PRE_PCA = 50      # t-SNE/UMAP run on the first 50 principal components (standard practice; also faster)
TSNE_JOBS = 1     # openTSNE threads: 2 took 15 s CPU vs 4 s for 1 on 2000 points (bench)


def one_thread():
    """BLAS/OpenMP pools at 1 thread while projecting and scoring: next to training workers on 2 cores,
    2 spinning OpenBLAS threads made PCA-50 of 2000×1176 take 6 s instead of 0.2 s (see the bench)."""
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=1)


def pca(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA
    k = min(k, x.shape[0], x.shape[1])
    return PCA(n_components=k, random_state=seed).fit_transform(x)


def project(features: np.ndarray, method: str, *, seed: int = 0, n_jobs: int = TSNE_JOBS) -> np.ndarray:
    """(N, D) -> (N, 2) float32 with PCA, t-SNE (openTSNE; sklearn if absent) or UMAP; same seed, same output."""
    x = np.asarray(features, dtype=np.float32)
    if method not in PROJECTIONS:
        raise ValueError(f"unknown projection {method!r}; choose one of {', '.join(PROJECTIONS)}")
    if x.ndim != 2 or len(x) < 5:
        raise ValueError(f"need a 2-D array of at least 5 points to project, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or Inf (a diverged run?); pick an earlier checkpoint or another run")
    if not np.ptp(x, axis=0).any():
        raise ValueError(f"all {len(x)} feature vectors are identical (a dead extractor: every ReLU output zero?), "
                         "so there is nothing to project; pick an earlier checkpoint or another run")
    with one_thread():
        if method == "pca":
            out = pca(x, 2, seed)
        else:
            x50 = pca(x, PRE_PCA, seed) if x.shape[1] > PRE_PCA else x
            out = _tsne(x50, seed, n_jobs) if method == "tsne" else _umap(x50, seed)
    out = np.asarray(out, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"{method} gave non-finite coordinates (nearly identical features?); try PCA, more points "
                         "or another checkpoint")
    return np.pad(out, ((0, 0), (0, 2 - out.shape[1]))) if out.shape[1] < 2 else out  # D = 1 edge case


def _tsne(x: np.ndarray, seed: int, n_jobs: int) -> np.ndarray:
    perplexity = min(30.0, (len(x) - 1) / 3)  # t-SNE needs N > 3·perplexity
    try:
        from openTSNE import TSNE
    except ImportError:
        from sklearn.manifold import TSNE as SkTSNE
        return SkTSNE(perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    return np.asarray(TSNE(perplexity=perplexity, random_state=seed, n_jobs=n_jobs).fit(x))


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
    import umap
    with warnings.catch_warnings():  # "n_jobs overridden by random_state": wanted, for determinism
        warnings.simplefilter("ignore")
        return umap.UMAP(n_neighbors=min(15, len(x) - 1), random_state=seed, n_jobs=1).fit_transform(x)


def prewarm_umap() -> float:
    """Run UMAP once on 64 random points so numba compiles now (~11 s CPU, once per process) rather than
    on the user's first UMAP view; returns the seconds it took. Safe to call from a background thread."""
    import time
    t = time.perf_counter()
    project(np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32), "umap")
    return time.perf_counter() - t


_prewarm_started = False


def prewarm_umap_in_background() -> None:
    """Start `prewarm_umap` once per process in a daemon thread (the Embeddings page calls this on
    entry, so UMAP is compiled by the time a user picks it)."""
    global _prewarm_started
    if not _prewarm_started:
        import threading
        _prewarm_started = True
        threading.Thread(target=prewarm_umap, name="umap-prewarm", daemon=True).start()
