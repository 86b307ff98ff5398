"""dfg/cudagraphs.py's bookkeeping on the CPU, with torch.cuda replaced by a stand-in: its 'capture' runs
the step and then puts every tensor of the method back (a real capture runs nothing), and its 'replay'
runs the captured step again on the static batch buffers. That checks which steps warm up, which are
captured, that each replay reads the step's own batches in order, that the losses come out of the packed
tensor under the right names, and that after_update (W*) runs on every step: the graphed run must give
the eager run's numbers exactly. The CUDA side itself is tests/test_cuda.py's (GPU only)."""
import contextlib
import copy
import types

import pytest
import torch

from dfg import cudagraphs
from dfg.config import make_config
from dfg.data import BatchStream
from dfg.loop import setup
from dfg.methods import scalars
from dfg.methods.base import pack_losses

TINY = dict(steps=26, pretrain_steps=30, head_refit_steps=5, n_w=5, n_c1=2, n_c2=3, fw_per_class=3, threads=1,
            batch_size=16, difa_phase_fraction=0.2)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


class StandInGraph:
    def __init__(self):
        self.step = None

    def register_generator_state(self, generator):
        self.generator = generator

    def pool(self):
        return "pool"

    def replay(self):
        self.step()

    def reset(self):
        self.step = None


def stand_in_cuda(method):
    def state():
        return copy.deepcopy({"nets": {k: n.state_dict() for k, n in method.nets.items()},
                              "opts": {k: o.state_dict() for k, o in method.opts.items()},
                              "rng": method.ctx.rng.get_state()})

    @contextlib.contextmanager
    def graph(g, pool=None, capture_error_mode=None):
        before = state()
        yield
        for k, n in method.nets.items():  # a capture runs nothing: everything as before
            n.load_state_dict(before["nets"][k])
        for k, o in method.opts.items():
            o.load_state_dict(before["opts"][k])
        method.ctx.rng.set_state(before["rng"])

    side = types.SimpleNamespace(wait_stream=lambda other: None)
    return types.SimpleNamespace(Stream=lambda device: side, stream=lambda s: contextlib.nullcontext(),
                                 current_stream=lambda: side, synchronize=lambda: None, empty_cache=lambda: None,
                                 memory_reserved=lambda: 0,
                                 CUDAGraph=StandInGraph,
                                 graph=graph, is_available=lambda: True, device=lambda d: contextlib.nullcontext())


def graphed(method, monkeypatch):
    """GraphedSteps over `method` (on the CPU) with the stand-in; each capture's replay re-runs its step."""
    proxy = types.SimpleNamespace(**{k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})
    proxy.cuda = stand_in_cuda(method)
    proxy.empty = lambda *shape, dtype=None, device=None: torch.zeros(*shape, dtype=dtype)
    monkeypatch.setattr(cudagraphs, "torch", proxy)
    cpu, method.ctx.device = method.ctx.device, torch.device("cuda")  # only for the device check
    logged = []
    steps = cudagraphs.GraphedSteps(method, log=logged.append)
    method.ctx.device = cpu
    capture = steps._capture

    def capture_and_record(step, key):
        g = capture(step, key)

        def replay():
            names, packed = pack_losses(method.update(step, cudagraphs._Static(g.buffers)))
            assert names == g.keys
            g.packed.copy_(packed)
        g.graph.step = replay
        return g
    steps._capture = capture_and_record
    eager = steps._eager

    def eager_alone(step, key, batches):  # no warm-up step while graphs hold their pool
        assert not steps.graphs, f"step {step} ran eagerly beside {len(steps.graphs)} graph(s)"
        return eager(step, key, batches)
    steps._eager = eager_alone
    return steps, logged


SGD_DROP = {"optimizer_ec": "sgd", "lr_drop_at": 0.5}  # E/C lr ÷ 10 after step 13: every key is captured anew
# (method, config overrides, the steps captured in a 26-step TINY run); tests/test_cuda.py runs them on a GPU
# (a key's warm-up step releases the live graphs, which their keys' next steps capture again: DFG's key of
# steps 3, 9, 15 warms up at 9 and releases the graphs of steps 7 and 8, recaptured at 10 and 11)
GRAPH_CASES = [("dfg", {}, [7, 8, 10, 11, 13, 14, 15, 18]), ("difa_cmwgan", {}, [17, 19, 20, 22, 23, 24]),
               ("original", {}, [3]), ("finetune", {}, [3]), ("delta", {}, [3]),
               ("dfg", SGD_DROP, [7, 8, 10, 11, 13, 20, 22, 23, 25, 26]), ("finetune", SGD_DROP, [3, 16])]


@pytest.mark.parametrize("method,extra,expected", GRAPH_CASES)
def test_graphed_steps_give_the_eager_numbers(method, extra, expected, data_root, monkeypatch):
    """Captures at the 3rd step of each graph key, and again after another key's warm-up released the graphs
    (with SGD's lr drop, the keys after step 13 are new)."""
    cfg = make_config("demo", {**TINY, "method": method, "data_root": data_root, **extra})
    results = []
    for graphs in (False, True):
        data, m = setup(cfg, torch.device("cpu"), log=lambda msg: None)
        m.on_start()
        stream = BatchStream(data.train, cfg.batch_size, seed=0)
        step_fn, logged = graphed(m, monkeypatch) if graphs else (m.train_step, [])
        rows = [scalars(step_fn(s, stream)) for s in range(1, cfg.steps + 1)]
        params = torch.cat([p.detach().flatten() for n in m.nets.values() for p in n.parameters()])
        results.append((rows, params, getattr(m, "w_star", None), logged, stream.drawn))
    (rows_e, p_e, w_e, _, drawn_e), (rows_g, p_g, w_g, logged, drawn_g) = results
    assert [int(m.split()[2]) for m in logged if "captured" in m] == expected
    assert rows_g == rows_e and torch.equal(p_g, p_e) and drawn_g == drawn_e
    if method == "dfg":
        assert torch.equal(w_g, w_e) and not torch.equal(w_e, torch.ones_like(w_e))  # W* recomputed


@pytest.mark.parametrize("good", [0, 1])
def test_a_capture_that_fails_leaves_the_run_going_eagerly(good, data_root, monkeypatch):
    """The first `good` captures work (DFG: step 7), the next fails (step 7 or 8): the run goes on eagerly and
    the graphs captured before are released."""
    cfg = make_config("demo", {**TINY, "data_root": data_root})
    data, m = setup(cfg, torch.device("cpu"), log=lambda msg: None)
    m.on_start()
    steps, logged = graphed(m, monkeypatch)
    capture = steps._capture

    def broken(step, key):
        if steps.captured < good:
            return capture(step, key)
        raise RuntimeError("operation not permitted when stream is capturing")
    steps._capture = broken
    stream = BatchStream(data.train, cfg.batch_size, seed=0)
    rows = [scalars(steps(s, stream)) for s in range(1, 10)]
    assert steps.failed and "operation not permitted" in steps.failed and steps.captured == good
    assert sum("failed" in msg and "without CUDA graphs" in msg for msg in logged) == 1
    assert not steps.graphs and sum("released 1 graph(s) captured before" in msg for msg in logged) == good
    assert len(rows) == 9 and all("L_D" in r for r in rows)
    assert all(not g["capturable"] for o in m.opts.values() for g in o.param_groups if "capturable" in g)


def test_each_warm_up_step_is_settled_no_gradient_and_fresh_optimiser_state(data_root, monkeypatch):
    """After every eager warm-up step (DFG: steps 1-6, then 9, whose key releases the graphs of 7 and 8) the
    parameters hold no gradient and each optimiser state tensor is a copy: new storage, the same values
    (on a GPU, so that no lasting tensor pins the side stream's blocks)."""
    cfg = make_config("demo", {**TINY, "data_root": data_root})
    data, m = setup(cfg, torch.device("cpu"), log=lambda msg: None)
    m.on_start()
    steps, logged = graphed(m, monkeypatch)
    settle, settled = steps._settle, []

    def state_tensors():
        return {(id(o), id(p), k): v for o in m.opts.values() for p, st in o.state.items() for k, v in st.items()
                if isinstance(v, torch.Tensor)}

    def checked():
        params = [p for o in m.opts.values() for g in o.param_groups for p in g["params"]]
        before = {k: (v.data_ptr(), v.clone()) for k, v in state_tensors().items()}
        assert any(p.grad is not None for p in params) and before  # the warm-up step left both behind
        settle()
        assert all(p.grad is None for p in params)
        after = state_tensors()
        assert after.keys() == before.keys()
        assert all(v.data_ptr() != before[k][0] and torch.equal(v, before[k][1]) for k, v in after.items())
        settled.append(steps.seen.total())
    steps._settle = checked
    stream = BatchStream(data.train, cfg.batch_size, seed=0)
    for s in range(1, 10):
        steps(s, stream)
    assert settled == [1, 2, 3, 4, 5, 6, 7]
    assert [int(msg.split()[2]) for msg in logged if "captured" in msg] == [7, 8]
    assert sum("released 2 graph(s) before step 9" in msg for msg in logged) == 1


def test_what_a_captured_step_reads_by_pointer_is_updated_in_place(data_root):
    """A graph replays the kernels it recorded, on the tensors it recorded: W* must change in place (a new
    tensor would leave the graph on the old weights; the CPU stand-in above re-runs Python and cannot see
    that), and a learning-rate change must change the key so that a new graph is captured."""
    from dfg.methods import METHODS

    cfg = make_config("demo", {**TINY, "data_root": data_root})
    data, m = setup(cfg, torch.device("cpu"), log=lambda msg: None)
    m.on_start()
    w_star, ptr = m.channel_weights(), m.w_star.data_ptr()
    z, y = torch.rand(4, m.generator.noise_dim) * 2 - 1, torch.arange(4)
    m.generator.eval()
    before = m.generate(z, y)
    m.set_weights(5, torch.rand_like(m.w_target) * 2)
    assert m.channel_weights() is w_star and m.w_star.data_ptr() == ptr
    assert not torch.equal(m.generate(z, y), before)  # G reads the buffer at call time
    m.load_extra_state({"w_target": torch.ones_like(m.w_target), "w_star": torch.ones_like(m.w_star),
                        "last_loss_e": torch.tensor(0.5)})
    assert m.w_star.data_ptr() == ptr and torch.equal(m.w_star, torch.ones_like(m.w_star))
    for name in sorted(METHODS):
        sgd = make_config("demo", {**TINY, **SGD_DROP, "method": name, "data_root": data_root})
        _, method = setup(sgd, torch.device("cpu"), log=lambda msg: None)
        factors = [method.lr_factor(s) for s in range(1, sgd.steps + 1)]
        assert factors == [1.0] * 13 + [0.1] * 13, name  # steps=26, lr_drop_at=0.5: ÷10 from step 14 on
        assert all(method.graph_key(s)[0] == f for s, f in zip(range(1, sgd.steps + 1), factors)), name
