"""Training steps replayed as CUDA graphs (config `cuda_graphs`): one launch per iteration instead of the
thousands of small kernels an eager step queues one by one from Python.

A method's `update(step, batches)` runs the same ops on every step with the same `graph_key(step)` (the
nC1/nC2 branches, the lr factor, DIFA's phase). For each key:
1. its first `warmup` steps run eagerly on a side stream (optimiser state, cuBLAS/cuDNN handles), and
   record how many batches the step draws and their shapes;
2. the next step is captured: its batches are static device buffers, the run's noise generator is
   registered with the graph, the Adam optimisers are capturable;
3. that step and every later one with the key: the step's batches are drawn from the stream as usual and
   copied into the buffers, the graph replays, and its losses (packed into one tensor in the graph) are
   copied out, so they survive the next replay.
`method.after_update(step, out)` (filter weights every nW steps, Python-side state) runs eagerly after
every step, graphed or not.

GPU memory: graphs should cost about what eager steps cost (bench/cuda_graphs_memory.py, README). Three rules:
- No eager step runs while graphs hold their memory pool: a key that still needs a warm-up step first
  releases every graph (each is captured again at its key's next step, as it is already warmed up), the
  gradients that live in their pool, and every cached block. Once every key is warmed up, nothing is
  released: a run warms up in its first few dozen steps, and again after SGD's lr drop or DIFA's phase
  change, whose steps are new keys.
- After a warm-up step, the tensors it leaves behind are settled: the optimiser state its first step
  created is copied into fresh tensors on the current stream and the gradients are dropped (every step
  sets them to None before its backward), so no lasting tensor pins the side stream's blocks, which
  then go back to the driver (the captured steps allocate in their own pool and could not reuse them).
- Cached blocks that an eager `after_update` (a filter-weight pass every nW steps) leaves beside live
  graphs go back to the driver at once.

The numbers are those of eager steps: the same kernels on the same data, and the same random draws
(capture draws nothing; each replay advances the noise generator by exactly what the step draws). Graphs
of different keys share one memory pool: they never run at the same time, every tensor a graph reads
is either written by it earlier in the same replay or lives outside the pool (parameters, optimiser and
batch-norm state, W*, the batch buffers), and its losses are copied out right after it replays."""
from __future__ import annotations

import warnings
from collections import Counter
from contextlib import contextmanager

import torch

from .methods.base import pack_losses

CAPTURABLE_WARNING = ".*capturable=True.*"  # torch: a capturable optimiser stepping outside a graph (warm-up)


class _Recording:
    """Stands in for the batch stream during a warm-up step: passes batches through, records their layout."""

    def __init__(self, stream):
        self.stream, self.layout = stream, []

    def next(self):
        batch = self.stream.next()
        self.layout.append(tuple((t.shape, t.dtype) for t in batch))
        return batch


class _Static:
    """Stands in for the batch stream during capture: the i-th draw is the i-th static buffer."""

    def __init__(self, buffers):
        self.buffers, self.drawn = buffers, 0

    def next(self):
        if self.drawn == len(self.buffers):
            raise RuntimeError("the captured step draws more batches than its warm-up steps did")
        self.drawn += 1
        return self.buffers[self.drawn - 1]


class _Graph:
    def __init__(self, graph, buffers, keys, packed, constants):
        self.graph, self.buffers, self.keys, self.packed, self.constants = graph, buffers, keys, packed, constants

    def run(self, stream) -> dict:
        for buffer in self.buffers:
            for static, t in zip(buffer, stream.next()):
                if t.shape != static.shape:
                    raise RuntimeError(f"a batch of shape {tuple(t.shape)} came where the captured step reads "
                                       f"{tuple(static.shape)}; set cuda_graphs=false for this run")
                static.copy_(t, non_blocking=True)
        self.graph.replay()
        losses = self.packed.clone() if self.keys else None
        return {**{k: losses[i] for i, k in enumerate(self.keys)}, **self.constants}


class GraphedSteps:
    """`train_step(step, batches)` for `method` with each key's steps replayed as one CUDA graph."""

    def __init__(self, method, warmup: int = 2, log=lambda message: None):
        if method.ctx.device.type != "cuda" or not torch.cuda.is_available():
            raise ValueError(f"cuda_graphs needs the run on a CUDA device; this one is on {method.ctx.device}")
        self.method, self.warmup, self.log = method, max(1, int(warmup)), log
        self.failed: str | None = None  # why capture failed: every later step then runs eagerly
        self.graphs: dict[tuple, _Graph] = {}  # the live graphs (all released before an eager warm-up step)
        self.captured = 0                        # graphs captured so far, recaptures included
        self.layouts: dict[tuple, list] = {}
        self.seen: Counter = Counter()
        self.buffers: list[tuple[torch.Tensor, ...]] = []  # static batches, shared by every key's graph
        self.pool = None
        self.side = torch.cuda.Stream(method.ctx.device)
        self._capturable(True)

    def _capturable(self, on: bool) -> None:
        for opt in self.method.opts.values():
            for group in opt.param_groups:
                if "capturable" in group:  # Adam: step counts on the device, no host-side bias correction
                    group["capturable"] = on

    def __call__(self, step: int, batches) -> dict:
        with torch.cuda.device(self.method.ctx.device):  # capture records the current device's stream only
            return self._call(step, batches)

    def _call(self, step: int, batches) -> dict:
        if self.failed:
            return self.method.train_step(step, batches)
        key = self.method.graph_key(step)
        if key not in self.graphs and self.seen[key] >= self.warmup:
            try:
                self.graphs[key] = self._capture(step, key)
            except RuntimeError as e:  # capture ran no kernel: the step and the rest of the run go eagerly
                self.failed = f"{type(e).__name__}: {e}"
                self._capturable(False)
                self.log(f"cuda_graphs: capturing step {step} failed ({self.failed}); this run continues "
                         "without CUDA graphs")
                self._release("captured before; the run goes on without them")
                torch.cuda.synchronize()
                return self.method.train_step(step, batches)
            self.captured += 1
            self.log(f"cuda_graphs: step {step} captured (capture {self.captured}, key {key})")
        if key in self.graphs:
            out = self.graphs[key].run(batches)
        else:
            self._release(f"before step {step}, a warm-up step of key {key}; their keys' next steps capture "
                          "them again")
            self.seen[key] += 1
            out = self._eager(step, key, batches)
            self._settle()
        reserved = torch.cuda.memory_reserved()
        self.method.after_update(step, out)
        if self.graphs and torch.cuda.memory_reserved() > reserved:  # e.g. W(E) every nW steps
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        return out

    def _release(self, why: str) -> None:
        """Free every graph, their pool and every cached block: before an eager warm-up step, so the two never
        hold memory at once (nor the blocks a filter-weight pass left cached), and once a capture failed."""
        n = len(self.graphs)
        for g in self.graphs.values():
            g.graph.reset()
        self.graphs.clear()
        self.pool = None
        self._drop_grads()  # the gradients of the last captured steps live in the pool and would pin it
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        if n:
            self.log(f"cuda_graphs: released {n} graph(s) {why}")

    def _drop_grads(self) -> None:
        for opt in self.method.opts.values():
            opt.zero_grad(set_to_none=True)

    def _settle(self) -> None:
        """After an eager warm-up step (no graph is alive): copy the optimiser state into fresh tensors on the
        current stream and drop the gradients (see the module's docstring). The copies hold the same values,
        so the numbers do not change. Then the side stream's blocks, now unused, go back to the driver (the
        synchronisation also keeps them from being reused while the copies still read them)."""
        self._drop_grads()
        for opt in self.method.opts.values():
            for state in opt.state.values():
                for name, value in state.items():
                    if isinstance(value, torch.Tensor):
                        state[name] = value.clone()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()

    def _eager(self, step: int, key: tuple, batches) -> dict:
        recording = _Recording(batches)
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side), _quiet():
            out = self.method.update(step, recording)
        torch.cuda.synchronize()  # a few steps per key: no stream bookkeeping for the tensors made on the side
        if self.layouts.setdefault(key, recording.layout) != recording.layout:
            raise RuntimeError(f"steps with the same graph key {key} drew different batches: "
                               f"{self.layouts[key]} vs {recording.layout}; set cuda_graphs=false for this run")
        return out

    def _capture(self, step: int, key: tuple) -> _Graph:
        layout = self.layouts[key]
        for i, shapes in enumerate(layout):
            if i == len(self.buffers) or tuple((t.shape, t.dtype) for t in self.buffers[i]) != shapes:
                made = tuple(torch.empty(s, dtype=d, device=self.method.ctx.device) for s, d in shapes)
                self.buffers[i:i + 1] = [made]
        buffers = self.buffers[:len(layout)]
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.method.ctx.rng)
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"), _quiet():
            static = _Static(buffers)
            out = self.method.update(step, static)
            keys, packed = pack_losses(out)
        if static.drawn != len(buffers):
            raise RuntimeError(f"the captured step drew {static.drawn} batches, its warm-up steps {len(buffers)}")
        if self.pool is None:
            self.pool = graph.pool()
        constants = {k: v for k, v in out.items() if not isinstance(v, torch.Tensor)}
        return _Graph(graph, buffers, keys, packed, constants)


@contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=CAPTURABLE_WARNING)
        yield
