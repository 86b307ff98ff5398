"""The CUDA path end to end. Skipped where torch sees no GPU (CI has none); run on a GPU machine with
`python -m pytest -q tests/test_cuda.py` (bench/gpu_check.sh runs it with the GPU benchmarks).

Each test holds the GPU result against something that could differ: autograd, the per-filter
reference, the CPU, or a second seeded run."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dfg import wgan_gp
from dfg.config import make_config
from dfg.gan import Critic, Generator
from dfg.loop import configure_backend, run_eval, setup, train
from dfg.restored import restore
from dfg.methods import METHODS
from dfg.networks import BACKBONES, build_backbone
from dfg.runstore import Run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from reference import per_filter_class_weights  # noqa: E402
from test_cudagraphs import GRAPH_CASES  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")
REPO = Path(__file__).resolve().parent.parent
TINY = dict(steps=6, pretrain_steps=30, head_refit_steps=5, log_every=2, eval_every=3, ckpt_every=3,
            limit_test=200, n_w=2, n_c1=2, n_c2=3, fw_per_class=3, batch_size=16, device="cuda")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(autouse=True)
def full_fp32():
    """Every test starts in full float32 (TF32 off) with torch's default, non-deterministic kernels."""
    configure_backend(make_config("demo", {}), CUDA)
    yield
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False


def tiny(data_root, **kw):
    return make_config("demo", {**TINY, "data_root": data_root, **kw})


def train_rows(run):
    return [{k: v for k, v in r.items() if k not in ("time", "steps_per_s")}
            for r in run.read_metrics()[0] if r["kind"] == "train"]


@pytest.mark.parametrize("backbone", ["lenet", "vgg16", "resnet50"])
def test_closed_form_critic_gradients_equal_autograd_on_cuda(backbone):
    torch.manual_seed(0)
    critic = Critic(backbone).double().to(CUDA)
    batch = 2 if backbone == "resnet50" else 8
    shape = (batch, *BACKBONES[backbone].feature_shape)
    real, fake = (torch.randn(shape, dtype=torch.double, device=CUDA) for _ in range(2))
    eps = torch.rand(batch, 1, 1, 1, dtype=torch.double, device=CUDA)
    mixed = eps * real + (1 - eps) * fake
    ref = wgan_gp.reference_critic_loss(critic, real, fake, mixed, 10.0)
    ref.loss.backward()
    expected = {n: p.grad.clone() for n, p in critic.named_parameters()}
    critic.zero_grad(set_to_none=True)
    got = wgan_gp.critic_loss_and_grads(critic, real, fake, mixed, 10.0)
    assert got.loss.item() == pytest.approx(ref.loss.item(), rel=1e-9)
    assert got.penalty.item() > 1e-3
    for name, p in critic.named_parameters():
        assert p.grad.device.type == "cuda"
        assert torch.allclose(p.grad, expected[name], rtol=1e-8, atol=1e-11), name


@pytest.mark.parametrize("backbone", ["lenet", "vgg16"])
def test_batched_filter_weights_equal_the_per_filter_reference_on_cuda(backbone):
    from dfg.filter_weights import compute_class_weights
    torch.manual_seed(1)
    e, c = build_backbone(backbone, num_classes=4)
    e, c = e.to(CUDA), c.to(CUDA)
    cin = BACKBONES[backbone].in_channels
    x, y = torch.randn(40, cin, 32, 32, device=CUDA), torch.arange(40, device=CUDA) % 4
    batched = compute_class_weights(e, c, x, y, 4)
    reference = per_filter_class_weights(e, c, x, y, 4).to(CUDA)
    assert batched.device.type == "cuda" and batched.shape == (4, e.num_filters)
    assert (batched - reference).abs().max().item() <= 1e-5
    on_cpu = compute_class_weights(e.cpu(), c.cpu(), x.cpu(), y.cpu(), 4)
    assert (batched.cpu() - on_cpu).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", list(BACKBONES))
def test_generator_output_matches_extractor_output_on_cuda(name):
    spec = BACKBONES[name]
    e, _ = build_backbone(name, num_classes=5)
    g = Generator(name, num_classes=5).to(CUDA)
    e = e.to(CUDA).eval()
    with torch.no_grad():
        feats = e(torch.randn(2, spec.in_channels, spec.image_size, spec.image_size, device=CUDA))
        fake = g(torch.rand(2, g.noise_dim, device=CUDA) * 2 - 1, torch.tensor([0, 4], device=CUDA),
                 torch.ones(5, e.num_filters, device=CUDA))
    assert fake.shape == feats.shape and fake.device.type == "cuda"


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_on_cuda_and_its_checkpoint_evaluates_on_the_cpu(method, data_root, tmp_path):
    cfg = tiny(data_root, method=method, difa_phase_fraction=0.34)
    run = Run.create(tmp_path, f"c-{method}", cfg.to_dict())
    status = train(cfg, run, log=lambda m: None)
    assert status["state"] == "finished", status
    assert run.status()["device"].startswith("cuda")
    rows = train_rows(run)
    assert [r["step"] for r in rows] == [2, 3, 4, 6]
    assert all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))
    last = [r for r in run.read_metrics()[0] if r["kind"] == "eval"][-1]
    # the same checkpoint restored on the CPU predicts (almost) the same test set: full fp32 on both
    _, data, on_cpu, step = restore(run, "cpu")
    assert step == 6 and next(on_cpu.extractor.parameters()).device.type == "cpu"
    cpu_top1 = run_eval(on_cpu, data, torch.device("cpu"))["top1"]
    assert abs(cpu_top1 - last["top1"]) <= 2 / last["n"], (cpu_top1, last["top1"])


def test_deterministic_cuda_runs_repeat_exactly_and_resume_gives_the_uninterrupted_rows(data_root, tmp_path):
    cfg = tiny(data_root, deterministic=True, steps=9, log_every=3, eval_every=9, ckpt_every=3)
    a, b = (Run.create(tmp_path, rid, cfg.to_dict()) for rid in ("a", "b"))
    assert train(cfg, a, log=lambda m: None)["state"] == "finished"
    assert torch.are_deterministic_algorithms_enabled()
    assert train(cfg, b, log=lambda m: None)["state"] == "finished"
    assert train_rows(a) == train_rows(b) and len(train_rows(a)) == 3
    # stopped after step 3, resumed in a fresh setup: the same rows as the uninterrupted run
    short = tiny(data_root, deterministic=True, steps=3, log_every=3, eval_every=9, ckpt_every=3)
    r = Run.create(tmp_path, "r", cfg.to_dict())
    assert train(short, r, log=lambda m: None)["state"] == "finished"
    assert train(cfg, r, resume=True, log=lambda m: None)["state"] == "finished"
    assert train_rows(r) == train_rows(a)


def test_tf32_switch_changes_the_matmul_precision_and_only_then():
    torch.manual_seed(0)
    a = torch.randn(1024, 1024, device=CUDA)
    b = torch.randn(1024, 1024, device=CUDA)
    exact = (a.double() @ b.double()).float()
    err = lambda: ((a @ b - exact).norm() / exact.norm()).item()  # noqa: E731
    full = err()
    configure_backend(make_config("demo", {"tf32": True}), CUDA)
    tf32 = err()
    assert full < 1e-6 and 1e-5 < tf32 < 1e-2, (full, tf32)


def test_gradcam_on_cuda_equals_the_cpu():
    from dfg import gradcam as gc
    torch.manual_seed(0)
    e, c = build_backbone("lenet", num_classes=10)
    x = torch.randn(6, 1, 32, 32)
    cpu = gc.gradcam(type("M", (), {"extractor": e.eval(), "classifier": c.eval()})(), x)
    gpu = gc.gradcam(type("M", (), {"extractor": e.to(CUDA), "classifier": c.to(CUDA)})(), x)
    np.testing.assert_array_equal(gpu[1], cpu[1])
    np.testing.assert_allclose(gpu[2], cpu[2], rtol=1e-4)
    np.testing.assert_allclose(gpu[0], cpu[0], atol=1e-4)
    assert cpu[0].max() > 0.99  # a real map, not all zeros


def test_cli_with_device_auto_trains_on_the_gpu(data_root, tmp_path):
    cmd = [sys.executable, "-m", "dfg", "train", "--preset", "demo", "--runs-dir", str(tmp_path), "--run-id", "auto",
           "--set", f"data_root={data_root}", "--set", "device=auto"]
    for k, v in TINY.items():
        if k != "device":
            cmd += ["--set", f"{k}={v}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = Run(tmp_path, "auto").status()
    assert status["state"] == "finished" and status["device"].startswith("cuda")


def test_setup_puts_every_network_on_the_gpu(data_root):
    _, method = setup(tiny(data_root), CUDA, log=lambda m: None)
    for name, net in method.nets.items():
        assert all(p.device.type == "cuda" for p in net.parameters()), name
    assert method.w_star.device.type == "cuda" and method.w_source.device.type == "cuda"


def start_from_the_train_page(runs: Path, data_root: str, monkeypatch, run_id: str, untick=()):
    """Open the app, go to the Train page, shrink the demo to a few steps, untick the checkboxes named in
    `untick` and press Start. Returns the AppTest and the run the page launched, after its background worker
    has ended."""
    import time

    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("DFG_RUNS_DIR", str(runs))
    monkeypatch.setenv("DFG_DATA_ROOT", data_root)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/train.py").run()
    assert not at.exception, [e.value for e in at.exception]
    prefix = "train.demo.dfg."
    for name in ("steps", "pretrain_steps", "head_refit_steps", "eval_every", "log_every", "ckpt_every",
                 "limit_test", "n_w", "fw_per_class"):
        at.number_input(key=prefix + name).set_value(TINY[name])
    for name in untick:
        at.checkbox(key=prefix + name).uncheck()
    at.text_input(key="train.run_id").set_value(run_id)
    at.button(key="train.start").click().run()
    assert not at.error, [e.value for e in at.error]
    run, deadline = Run(runs, run_id), time.time() + 300
    while run.status().get("state") not in ("finished", "failed", "diverged") and time.time() < deadline:
        time.sleep(1)
    return at, run


def test_the_app_offers_the_gpu_first_and_its_run_trains_there(data_root, tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    at, run = start_from_the_train_page(tmp_path / "runs", data_root, monkeypatch, "from-app")
    assert any("CUDA:" in c.value for c in at.caption), [c.value for c in at.caption]  # the sidebar's device
    status = run.status()
    assert status["state"] == "finished", status
    assert status["device"].startswith("cuda") and run.config()["device"] == "cuda"
    # CUDA graphs by default: the worker's log (the run's log.txt) names the capture of step 5, the 3rd odd
    # step (the demo has nC1 = 2)
    log = (run.path / "log.txt").read_text()
    assert run.config()["cuda_graphs"] is True
    assert "cuda_graphs: step 5 captured" in log and "failed" not in log, log[-2000:]


def test_the_apps_cuda_graphs_box_unticked_trains_eagerly(data_root, tmp_path, monkeypatch):
    """The Train page's CUDA-graphs box reaches the worker process: unticked, the run is configured without
    graphs and the worker's log names no capture."""
    pytest.importorskip("streamlit")
    _, run = start_from_the_train_page(tmp_path / "runs", data_root, monkeypatch, "eager", untick=["cuda_graphs"])
    assert run.status()["state"] == "finished", run.status()
    assert run.config()["cuda_graphs"] is False
    assert "cuda_graphs" not in (run.path / "log.txt").read_text()


def _losses_and_params(method, stepper, stream, steps):
    from dfg.methods import scalars
    rows = [scalars(stepper(s, stream)) for s in range(1, steps + 1)]
    params = torch.cat([p.detach().flatten() for net in method.nets.values() for p in net.parameters()])
    return rows, params


@pytest.mark.parametrize("method,extra,expected", GRAPH_CASES)
def test_cuda_graph_steps_give_the_numbers_of_eager_steps(method, extra, expected, data_root):
    """The same seeded run, eagerly and with each key's steps replayed as a CUDA graph (deterministic
    kernels): every step's losses, the final weights and W* agree, and the graphs were really used, at
    the steps the CPU stand-in (tests/test_cudagraphs.py) predicts. Covers every method and SGD's lr drop,
    whose later steps are new graph keys, captured anew."""
    from dfg.cudagraphs import GraphedSteps
    from dfg.data import BatchStream
    cfg = tiny(data_root, method=method, steps=26, deterministic=True, difa_phase_fraction=0.2, n_w=5, **extra)
    results, stepper = [], None
    for graphs in (False, True):
        configure_backend(cfg, CUDA)
        data, m = setup(cfg, CUDA, log=lambda msg: None)
        m.on_start()
        stream = BatchStream(data.train, cfg.batch_size, seed=0, device=CUDA)
        run = m.train_step
        if graphs:
            run = stepper = GraphedSteps(m)
        results.append((*_losses_and_params(m, run, stream, cfg.steps), getattr(m, "w_star", None)))
    (eager, p_eager, w_eager), (graphed, p_graphed, w_graphed) = results
    assert stepper.failed is None and stepper.captured == len(expected), stepper.failed
    worst = max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-3) for a, b in zip(eager, graphed) for k in a)
    assert [set(r) for r in eager] == [set(r) for r in graphed]
    assert worst <= 1e-5, f"largest relative loss difference {worst:.2e}"
    assert torch.allclose(p_eager, p_graphed, rtol=1e-5, atol=1e-6), (p_eager - p_graphed).abs().max()
    if w_eager is not None:
        assert torch.allclose(w_eager, w_graphed, atol=1e-5)


def rows_close(a: dict, b: dict) -> bool:
    """Two metric rows with the same step and keys, every float within 1e-5 (relative above 1)."""
    return a.keys() == b.keys() and a["step"] == b["step"] and \
        all(abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(a[k])) for k in a if isinstance(a[k], float))


def test_training_with_cuda_graphs_logs_its_captures_and_resumes(data_root, tmp_path):
    """cuda_graphs=true through the loop: the log names each capture, the rows equal an eager run's (with
    deterministic kernels), and a run stopped at a checkpoint and resumed ends with the same rows."""
    base = dict(deterministic=True, steps=24, log_every=6, eval_every=24, ckpt_every=12)
    rows, logs = {}, {}
    for name, graphs in (("eager", False), ("graphs", True)):
        run = Run.create(tmp_path, name, tiny(data_root, **base, cuda_graphs=graphs).to_dict())
        logs[name] = []
        assert train(tiny(data_root, **base, cuda_graphs=graphs), run, log=logs[name].append)["state"] == "finished"
        rows[name] = train_rows(run)
    # the captures the CPU stand-in predicts for these keys (tests/test_cudagraphs.py, DFG): two warm-ups
    # (steps 9 and 12) release the graphs captured before them
    assert [int(m.split()[2]) for m in logs["graphs"] if "captured" in m] == [7, 8, 10, 11, 13, 14, 15, 18]
    assert sum("released" in m for m in logs["graphs"]) == 2 and not any("cuda_graphs" in m for m in logs["eager"])
    assert not any("failed" in m for m in logs["graphs"])
    assert len(rows["eager"]) == len(rows["graphs"])
    for a, b in zip(rows["eager"], rows["graphs"]):
        assert rows_close(a, b), (a, b)
    r = Run.create(tmp_path, "resumed", tiny(data_root, **base, cuda_graphs=True).to_dict())
    assert train(tiny(data_root, **{**base, "steps": 12}, cuda_graphs=True), r, log=lambda m: None)["state"] \
        == "finished"
    assert train(tiny(data_root, **base, cuda_graphs=True), r, resume=True, log=lambda m: None)["state"] == "finished"
    assert [a["step"] for a in train_rows(r)] == [a["step"] for a in rows["graphs"]]
    for a, b in zip(train_rows(r), rows["graphs"]):
        assert rows_close(a, b), (a, b)


def test_a_resnet50_folder_run_feeds_its_dataloader_batches_to_the_graphs(tmp_path):
    """Your own images on ResNet-50 come through a DataLoader (file-backed), not device tensors: with
    cuda_graphs each step's batch is copied into the graph's static buffers. Eager and graphed runs
    (deterministic kernels, SGD with its lr drop) log the same rows."""
    rows, logs = eager_and_graphed_resnet50_runs(tmp_path)
    # keys (nC1 = 1): (step % 3 == 0) x (lr dropped after step 6): steps 4 and 10 are the 3rd of theirs
    assert [m.split()[2] for m in logs[True] if "captured" in m] == ["4", "10"]
    assert not any("failed" in m for m in logs[True])
    assert len(rows[True]) == len(rows[False]) == 4
    for a, b in zip(rows[False], rows[True]):
        assert rows_close(a, b), (a, b)


def eager_and_graphed_resnet50_runs(tmp_path, **sets):
    """The same seeded ResNet-50 run on a folder of 2 x 10 random images (deterministic kernels, SGD with its
    lr drop after step 6), eagerly and with CUDA graphs: ({graphs: train rows}, {graphs: log lines})."""
    from PIL import Image
    rng = np.random.default_rng(0)
    imgs = tmp_path / "data" / "imgs"  # a folder dataset lives under the data root
    for c in ("ant", "bee"):
        (imgs / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(imgs / c / f"{i}.png")
    base = dict(backbone="resnet50", dataset="folder", folder=str(imgs), source="imagenet",
                allow_random_init=True, imbalance="none", batch_size=4, steps=12, log_every=3, eval_every=12,
                ckpt_every=12, n_w=6, n_c1=1, head_refit_steps=2, fw_per_class=2, limit_test=0, deterministic=True,
                optimizer_ec="sgd", lr_drop_at=0.5)
    rows, logs = {}, {}
    for graphs in (False, True):
        cfg = tiny(str(tmp_path / "data"), **{**base, **sets}, cuda_graphs=graphs)
        run = Run.create(tmp_path / "runs", f"folder-{graphs}", cfg.to_dict())
        logs[graphs] = []
        assert train(cfg, run, log=logs[graphs].append)["state"] == "finished"
        rows[graphs] = train_rows(run)
    return rows, logs


@pytest.mark.parametrize("method", ["finetune", "difa_cmwgan"])
def test_frozen_bn_eval_under_cuda_graphs_gives_the_eager_rows(method, tmp_path):
    """frozen_bn=eval switches BN layers to eval mode inside each update (DIFA+cMWGAN: per phase, a graph key),
    so each captured graph must hold the modes of its key: graphed rows equal the eager ones."""
    rows, logs = eager_and_graphed_resnet50_runs(tmp_path, method=method, frozen_bn="eval")
    assert any("captured" in m for m in logs[True]) and not any("failed" in m for m in logs[True])
    assert len(rows[True]) == len(rows[False]) == 4
    for a, b in zip(rows[False], rows[True]):
        assert rows_close(a, b), (a, b)

