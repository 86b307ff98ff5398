"""Value checks a mutation review of the command line, presets, preflight, the source-model cache and head re-fit,
the network and GAN builders, the CUDA-graph bookkeeping, checkpoints, crash-safe writes, the training loop, sweep
grids, executors and background jobs found missing: each test fails with its bug applied. All run on tiny
synthetic inputs (no training beyond a few steps), so the file stays fast."""
import errno
import json
import os
import signal
import socket
import time
import types

import numpy as np
import pytest
import torch
from torch import nn

from dfg import cli, fileio, jobs
from dfg.checkpoint import CheckpointError, content_digest, load_checkpoint, save_checkpoint
from dfg.config import Config, ConfigError, make_config, parse_value
from dfg.presets import PRESETS
from dfg.runstore import Run

from conftest import small_bn_nets

CPU = torch.device("cpu")


# ---- presets: Appendix A -----------------------------------------------------------------------------------
@pytest.mark.parametrize("preset, backbone, source", [
    ("svhn", "lenet", "emnist"), ("fmnist", "lenet", "emnist"),           # App. A: EMNIST for LeNet-5
    ("stl10", "vgg16", "cifar10"), ("cinic10", "vgg16", "cifar10"),       # CIFAR-10 for VGG-16
    ("caltech256", "resnet50", "imagenet"), ("food101", "resnet50", "imagenet")])
def test_each_paper_preset_has_its_backbone_source_and_equation_4_weights(preset, backbone, source):
    cfg = PRESETS[preset]
    assert (cfg.backbone, cfg.source) == (backbone, source)
    assert cfg.alpha == cfg.beta == cfg.gamma == pytest.approx(1 / 3)  # "α = β = γ = 0.333"
    assert cfg.method == "dfg"


@pytest.mark.parametrize("preset", ["caltech256", "food101"])
def test_resnet_presets_use_sgd_momentum_0_9_divided_by_10_after_20000_of_40000_steps(preset):
    cfg = PRESETS[preset]
    assert (cfg.optimizer_ec, cfg.sgd_momentum) == ("sgd", 0.9)
    assert cfg.lr_drop_at * cfg.steps == 20000  # "started with 0.01 and was divided by 10 after 20000 iterations"


# ---- the command line --------------------------------------------------------------------------------------
def test_every_preset_is_listed_by_the_presets_command(capsys):
    assert cli.main(["presets"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert listed == list(PRESETS)


@pytest.mark.parametrize("text, value", [("off", False), ("no", False), ("0", False), ("false", False),
                                         ("On", True), ("yes", True)])
def test_a_bool_set_as_text_reads_as_that_bool(text, value):
    assert parse_value("cuda_graphs", text) is value
    args = cli.build_parser().parse_args(["train", "--set", f"official_flip_sign={text}"])
    assert cli.config_from_args(args).official_flip_sign is value


def test_eval_reports_the_checkpoints_step_and_evaluates_on_the_device_asked(monkeypatch, capsys, tmp_path):
    import dfg.loop
    import dfg.restored
    asked = {}

    def restore(run, device, log=None):
        asked.update(run=(str(run.root), run.id), device=device)
        method = types.SimpleNamespace(ctx=types.SimpleNamespace(device=CPU))
        return make_config("demo", {"steps": 20}), None, method, 10  # a run stopped at step 10 of 20
    monkeypatch.setattr(dfg.restored, "restore", restore)
    monkeypatch.setattr(dfg.loop, "run_eval", lambda method, data, device: {"top1": 0.25, "confusion": [[1]]})
    assert cli.main(["eval", "r1", "--runs-dir", str(tmp_path), "--device", "cpu"]) == 0
    assert asked == {"run": (str(tmp_path), "r1"), "device": "cpu"}
    assert json.loads(capsys.readouterr().out) == {"run": "r1", "step": 10, "top1": 0.25}


def test_pretrain_makes_the_source_model_with_the_threads_its_cache_key_names(monkeypatch, tmp_path):
    import dfg.loop
    import dfg.source
    seen = {}
    monkeypatch.setattr(dfg.loop, "load_data", lambda cfg: types.SimpleNamespace(in_channels=1))
    monkeypatch.setattr(dfg.source, "pretrain_source",
                        lambda cfg, cin, device, progress=None: seen.update(threads=torch.get_num_threads()))
    before = torch.get_num_threads()
    want = 2 if before != 2 else 3
    try:
        assert cli.main(["pretrain", "--set", f"threads={want}", "--set", f"data_root={tmp_path}"]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == {"threads": want}


def test_a_diverged_or_failed_run_exits_1_and_a_finished_or_stopped_one_0(tmp_path, capsys):
    run = Run.create(tmp_path, "r", make_config("demo").to_dict())
    assert [cli._report(run, {"state": s, "step": 3}) for s in ("finished", "stopped", "diverged", "failed")] == \
        [0, 0, 1, 1]


def test_a_worker_whose_training_raises_records_the_run_as_failed(tmp_path, monkeypatch):
    import argparse

    import dfg.loop

    run = Run.create(tmp_path, "r", make_config("demo").to_dict())

    def boom(*a, **k):
        raise ValueError("boom")
    monkeypatch.setattr(dfg.loop, "train", boom)
    assert cli.cmd_worker(argparse.Namespace(run="r", runs_dir=str(tmp_path))) == 1
    s = run.raw_status()
    assert (s["state"], s["error"]) == ("failed", "ValueError: boom")


@pytest.mark.parametrize("given, expected", [([], ["data_root=/from/env"]),
                                             (["--set", "data_root=/mine"], ["data_root=/mine"])])
def test_a_sweep_takes_its_data_root_from_the_apps_variable_unless_set(given, expected, monkeypatch, tmp_path):
    import dfg.sweep

    seen = {}

    def run_sweep(runs_dir, presets, methods, seeds, **kw):
        seen.update(seeds=seeds, sets=kw["sets"], parallel=kw["parallel"])
        raise KeyboardInterrupt
    monkeypatch.setattr(dfg.sweep, "run_sweep", run_sweep)
    monkeypatch.setenv("DFG_DATA_ROOT", "/from/env")
    assert cli.main(["sweep", "--presets", "demo", "--runs-dir", str(tmp_path), "--parallel", "2", *given]) == 130
    assert seen == {"seeds": [0], "sets": expected, "parallel": 2}  # default --seeds 1: seed 0 alone


# ---- validation and preflight ------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    ({"source": "imagenet"}, "ImageNet weights exist for backbone=resnet50 only"),
    ({"n_c1": 0}, "n_c1=0 is invalid"),
    ({"threads": -1}, "threads=-1 is invalid"),
])
def test_settings_a_run_cannot_use_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        make_config("demo", overrides)


def test_preflight_validates_a_config_it_is_handed(tmp_path):
    from dfg.preflight import preflight

    with pytest.raises(ConfigError, match="rho=2.0 is invalid"):
        preflight(Config(rho=2.0, data_root=str(tmp_path)))
    assert not any(tmp_path.iterdir())


def test_preflight_refuses_a_data_root_where_the_source_model_cannot_be_cached(tmp_path, monkeypatch):
    import dfg.preflight

    monkeypatch.setattr(dfg.preflight, "writable_problem", lambda folder: "OSError: Read-only file system")
    with pytest.raises(ConfigError, match=r"the source model cannot be cached in .*sources \(OSError: Read-only"):
        dfg.preflight.preflight(make_config("demo", {"data_root": str(tmp_path)}))


def test_head_refit_never_with_another_class_count_stops_in_preflight(tmp_path):
    from PIL import Image

    from dfg.preflight import preflight
    from dfg.source import SourceError

    for cls in "abc":
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("L", (32, 32), 40 * i).save(tmp_path / "imgs" / cls / f"{i}.png")
    cfg = make_config("demo", {"dataset": "folder", "folder": "imgs", "grayscale": True, "imbalance": "none",
                               "head_refit": "never", "data_root": str(tmp_path)})
    with pytest.raises(SourceError, match="keeps the source head's 10 classes, but the target 'folder' has 3"):
        preflight(cfg)


# ---- the source model: cache key, pretraining seed, head re-fit, frozen ------------------------------------
def test_every_setting_that_changes_the_source_model_changes_its_cache_key(monkeypatch):
    from dfg.data import glyphs
    from dfg.source import source_key

    base = make_config("demo", {"threads": 1})
    keys = {source_key(base, 1)}
    for change in ({"pretrain_steps": 999}, {"source_per_class": 7}, {"official_default_init": True}):
        keys.add(source_key(make_config("demo", {"threads": 1, **change}), 1))
    keys.add(source_key(base, 3))  # in_channels
    assert len(keys) == 5
    monkeypatch.setattr(glyphs, "glyphs_tag", lambda: "v999-another-renderer")  # rendered images change
    assert source_key(base, 1) not in keys


def test_a_source_model_is_the_same_whatever_seed_the_run_that_trains_it_has(tmp_path):
    """The cache key holds no run seed, so the model must not depend on it: a run of seed 3 that fills the cache
    must leave what a run of seed 0 would have."""
    from dfg.source import pretrain_source, source_key

    nets = []
    for seed in (0, 3):
        cfg = make_config("demo", {"pretrain_steps": 3, "source_per_class": 8, "seed": seed, "threads": 1,
                                   "data_root": str(tmp_path / f"s{seed}")})
        nets.append(pretrain_source(cfg, 1, CPU, log=lambda m: None))
    assert source_key(make_config("demo", {"seed": 0}), 1) == source_key(make_config("demo", {"seed": 3}), 1)
    for a, b in zip(*nets):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _refit_head(steps: int):
    from dfg.data import TensorImages
    from dfg.source import refit_head

    torch.manual_seed(5)
    e, c = small_bn_nets(5)
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    refit_head(e, c, TensorImages(images, torch.arange(40) % 3), 3, make_config("demo", {"head_refit_steps": steps}),
               CPU)
    return c[-1].weight.detach().clone(), c[-1].bias.detach().clone()


def test_the_head_re_fit_takes_head_refit_steps_adam_steps_of_lr_1e_3():
    """One step of Adam moves every weight with a gradient by lr (its first update is lr·sign(g)); zero steps
    leave the freshly initialised head (the same seed gives the same init)."""
    w0, b0 = _refit_head(0)
    w1, b1 = _refit_head(1)
    step = torch.cat([(w1 - w0).flatten(), (b1 - b0).flatten()]).abs()
    assert step.max().item() == pytest.approx(1e-3, rel=1e-3)
    assert (step > 0.9e-3).float().mean() > 0.5
    assert not b0.any()  # a fresh head with the backbone's init: zero biases


def test_the_source_model_a_run_gets_is_frozen(monkeypatch):
    import dfg.source
    from dfg.data import DATASETS
    from dfg.networks import build_backbone

    torch.manual_seed(0)
    monkeypatch.setattr(dfg.source, "pretrain_source", lambda *a, **k: build_backbone("lenet", num_classes=10))
    cfg = make_config("demo")
    data = types.SimpleNamespace(in_channels=1, class_names=DATASETS["glyphs"].class_names, num_classes=10)
    src = dfg.source.source_model(cfg, data, CPU, (torch.randn(10, 1, 32, 32), torch.arange(10)), log=lambda m: None)
    params = list(src.extractor.parameters()) + list(src.classifier.parameters())
    assert params and not any(p.requires_grad for p in params)
    assert not src.extractor.training and not src.classifier.training


# ---- networks: Tables A.3, A.5, A.7 and their init ---------------------------------------------------------
def test_lenet_is_split_and_built_as_table_a3():
    from dfg.networks import build_backbone

    e, c = build_backbone("lenet", num_classes=10)
    assert [type(m).__name__ for m in c] == ["Conv2d", "ReLU", "MaxPool2x2", "Flatten", "Linear", "ReLU", "Linear",
                                             "ReLU", "Linear"]
    assert [(m.in_features, m.out_features) for m in c if isinstance(m, nn.Linear)] == [(400, 120), (120, 84),
                                                                                        (84, 10)]
    assert tuple(e(torch.zeros(2, 1, 32, 32)).shape) == (2, 6, 14, 14)


def test_vgg16_classifier_ends_fc_relu_4096_fc_relu_512_fc_as_table_a5():
    from dfg.networks import build_backbone

    _, c = build_backbone("vgg16", num_classes=10, init="default")
    assert [type(m).__name__ for m in list(c)[-7:]] == ["AdaptiveAvgPool2d", "Flatten", "Linear", "ReLU", "Linear",
                                                        "ReLU", "Linear"]
    assert [m.out_features for m in c if isinstance(m, nn.Linear)] == [4096, 512, 10]


def test_a_new_head_has_the_backbones_init_with_zero_biases():
    """ResNet-50's replaced fc and a re-fit head: He/Xavier weights and zero biases (App. A), not torch's
    default init (uniform, non-zero biases)."""
    from dfg.networks import build_backbone, replace_head

    torch.manual_seed(0)
    _, c = build_backbone("resnet50", num_classes=101)
    fc = c[-1]
    assert not fc.bias.any() and fc.weight.std().item() == pytest.approx((2 / 2048) ** 0.5, rel=0.05)
    _, lenet_c = build_backbone("lenet", num_classes=10)
    replace_head(lenet_c, 40, "xavier")
    head = lenet_c[-1]
    assert head.out_features == 40 and not head.bias.any()
    assert head.weight.std().item() == pytest.approx((2 / (84 + 40)) ** 0.5, rel=0.15)


def test_a_conditional_critic_starts_unconditional_and_adds_the_class_projection():
    from dfg.gan import Critic

    torch.manual_seed(0)
    d = Critic("lenet", num_classes=3)
    f, y = torch.randn(4, 6, 14, 14), torch.tensor([0, 1, 2, 1])
    assert not d.embed.weight.any()
    plain = d.net(f).squeeze(1)
    torch.testing.assert_close(d(f, y), plain)
    with torch.no_grad():
        d.embed.weight.normal_()
    h = d.net[:-1](f)
    torch.testing.assert_close(d(f, y), plain + (d.embed.weight[y] * h).sum(1))


# ---- kernels ---------------------------------------------------------------------------------------------------
def test_a_conv_whose_dense_matrix_would_pass_16_mb_stays_a_conv():
    """The same geometry (4x4 -> 2x2, 5x5 stride 2: 64 taps for 49 useful ones) is dense for D's 64 -> 128 channels
    (524,288 entries) but not for 512 -> 512 (16.8 M entries, 67 MB, over DENSE_MAX_ENTRIES)."""
    from dfg.kernels import DENSE_MAX_ENTRIES, DenseConv

    assert DENSE_MAX_ENTRIES == 1 << 22
    assert DenseConv.worthwhile(nn.Conv2d(64, 128, 5, 2, 2), torch.zeros(1, 64, 4, 4))
    assert not DenseConv.worthwhile(nn.Conv2d(512, 512, 5, 2, 2), torch.zeros(1, 512, 4, 4))


# ---- CUDA graphs' bookkeeping (no GPU needed) --------------------------------------------------------------
def test_a_replayed_steps_losses_survive_the_next_replay_and_each_batch_is_copied_in():
    from dfg.cudagraphs import _Graph

    packed, static = torch.zeros(2), torch.zeros(3)
    count = []

    class Replay:
        def replay(self):
            count.append(1)
            packed.copy_(torch.tensor([len(count), 10.0 * len(count)]) + static.sum())

    batches = iter([(torch.ones(3),), (torch.full((3,), 2.0),), (torch.ones(4),)])
    stream = types.SimpleNamespace(next=lambda: next(batches))
    g = _Graph(Replay(), [(static,)], ["L_D", "L_G"], packed, {"fw": 1})
    first = g.run(stream)
    second = g.run(stream)
    assert (float(first["L_D"]), float(first["L_G"]), first["fw"]) == (4.0, 13.0, 1)
    assert (float(second["L_D"]), float(second["L_G"])) == (8.0, 26.0)
    with pytest.raises(RuntimeError, match="cuda_graphs=false"):
        g.run(stream)  # a batch of another shape is refused, not copied into part of the buffer


def test_a_captured_step_that_draws_other_batches_than_its_warm_up_steps_is_refused(monkeypatch):
    from dfg import cudagraphs
    from test_cudagraphs import stand_in_cuda

    method = types.SimpleNamespace(nets={}, opts={}, ctx=types.SimpleNamespace(device=CPU, rng=torch.Generator()),
                                   update=lambda step, batches: {"L_D": batches.next()[0].sum()})
    proxy = types.SimpleNamespace(**{k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})
    proxy.cuda = stand_in_cuda(method)
    monkeypatch.setattr(cudagraphs, "torch", proxy)
    steps = cudagraphs.GraphedSteps.__new__(cudagraphs.GraphedSteps)  # its bookkeeping, without a device check
    steps.method, steps.buffers, steps.pool = method, [], None
    layout = ((torch.Size([2]), torch.float32),)
    steps.layouts = {("k",): [layout, layout]}  # the key's warm-up steps drew two batches, this step draws one
    with pytest.raises(RuntimeError, match="the captured step drew 1 batches, its warm-up steps 2"):
        steps._capture(5, ("k",))
    steps.layouts = {("k",): [layout]}
    graph = steps._capture(5, ("k",))
    assert list(graph.keys) == ["L_D"] and len(graph.buffers) == 1


# ---- checkpoints -------------------------------------------------------------------------------------------
def test_a_format_1_checkpoint_without_a_digest_is_still_read(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": 1, "backbone": "lenet", "method": "dfg", "step": 7, "state": {"w": torch.ones(2)}}, path)
    assert load_checkpoint(path, backbone="lenet", method="dfg")["step"] == 7


def test_a_checkpoint_of_another_method_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.ones(2)}, backbone="lenet", method="dfg", step=1)
    with pytest.raises(CheckpointError, match="method 'dfg'"):
        load_checkpoint(path, backbone="lenet", method="original")


@pytest.mark.parametrize("edit", ["count", "key"])
def test_an_edited_count_or_renamed_key_fails_the_checksum(edit, tmp_path):
    path = tmp_path / "c.pt"
    state = {"a": torch.ones(2), "b": torch.zeros(2), "loop": {"counts": {"L_D": 3}}}
    save_checkpoint(path, state, backbone="lenet", method="dfg", step=1)
    raw = torch.load(path, weights_only=True)
    if edit == "count":
        raw["state"]["loop"]["counts"]["L_D"] = 4
    else:  # same sort order, same values: only the name differs
        raw["state"] = {"aa": raw["state"].pop("a"), **raw["state"]}
    torch.save(raw, path)
    assert content_digest(raw["state"]) != raw["sha256"]
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


# ---- crash-safe writes -------------------------------------------------------------------------------------
def test_an_atomic_write_syncs_the_file_then_renames_then_syncs_the_folder(tmp_path, monkeypatch):
    import stat
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(
        "fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b))[1])
    fileio.atomic_write_bytes(tmp_path / "f.json", b"{}")
    assert events == ["fsync file", "rename", "fsync dir"]
    assert (tmp_path / "f.json").read_bytes() == b"{}" and os.listdir(tmp_path) == ["f.json"]


def test_a_fault_point_matches_its_step_exactly(monkeypatch):
    monkeypatch.setenv("DFG_FAULT", "kill_during_checkpoint:10,enospc_metrics:15")
    assert fileio.fault("kill_during_checkpoint", 10) and fileio.fault("enospc_metrics", 15)
    assert not fileio.fault("kill_during_checkpoint", 1) and not fileio.fault("enospc_metrics", 5)


def test_a_full_quota_is_a_full_disk(tmp_path):
    for code in (errno.ENOSPC, errno.EDQUOT):
        assert isinstance(fileio.disk_full_error(tmp_path, OSError(code, "x")), fileio.DiskFullError)
    assert not isinstance(fileio.disk_full_error(tmp_path, OSError(errno.EACCES, "x")), fileio.DiskFullError)


def test_numpy_counts_are_written_as_json_integers(tmp_path):
    fileio.atomic_write_json(tmp_path / "d.json", {"kept": np.int64(150), "share": np.float32(0.5)})
    assert (tmp_path / "d.json").read_text().replace(" ", "").replace("\n", "") == '{"kept":150,"share":0.5}'


def test_no_pid_is_not_a_live_process():
    assert fileio.pid_alive(0) is False and fileio.pid_alive(None) is False and fileio.pid_alive(os.getpid())


# ---- the training loop -------------------------------------------------------------------------------------
def test_each_train_row_is_the_mean_of_its_steps_and_the_last_step_is_evaluated_and_checkpointed(tmp_path,
                                                                                                  monkeypatch):
    from dfg import loop
    from dfg.methods import METHODS

    monkeypatch.setattr(METHODS["original"], "train_step", lambda self, step, batches: {"L_C": torch.tensor(
        float(step)), "L_rC": float(2 * step)})
    cfg = make_config("demo", {"method": "original", "steps": 5, "log_every": 2, "eval_every": 3, "ckpt_every": 4,
                               "limit_test": 20, "threads": 1, "fw_per_class": 1, "batch_size": 8,
                               "data_root": str(tmp_path / "data")})
    run = Run.create(tmp_path / "runs", "r", cfg.to_dict())
    assert loop.train(cfg, run, log=lambda m: None)["state"] == "finished"
    rows, _ = run.read_metrics()
    train = [(r["step"], r["L_C"], r["L_rC"]) for r in rows if r["kind"] == "train"]
    assert train == [(2, 1.5, 3.0), (4, 3.5, 7.0), (5, 5.0, 10.0)]  # steps 1-2, 3-4, 5
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [3, 5]
    assert load_checkpoint(run.checkpoint_path)["step"] == 5


def test_the_loop_helpers_judge_inf_balanced_data_and_a_batch_the_size_of_the_set():
    from dfg import loop

    assert loop._finite({"L_D": 1.0, "L_G": float("inf")}) == "L_G"
    assert loop._finite({"L_D": 1.0, "L_G": float("-inf")}) == "L_G" and loop._finite({"L_D": 1.0}) is None
    assert loop._minority(types.SimpleNamespace(num_classes=3, majority=())) == ()
    assert loop._minority(types.SimpleNamespace(num_classes=3, majority=(1,))) == (0, 2)
    cfg = make_config("demo", {"batch_size": 4})
    assert loop.batch_warnings(cfg, types.SimpleNamespace(train=[0] * 4)) == []
    assert len(loop.batch_warnings(cfg, types.SimpleNamespace(train=[0] * 3))) == 1


def test_setup_seeds_the_noise_generator_and_the_filter_weight_sample_with_the_run_seed_and_sets_threads(tmp_path):
    from dfg import loop

    before = torch.get_num_threads()
    want = 2 if before != 2 else 3
    try:
        cfg = make_config("demo", {"method": "original", "seed": 7, "threads": want, "fw_per_class": 3,
                                   "data_root": str(tmp_path)})
        data, method = loop.setup(cfg, CPU, log=lambda m: None, with_source=False)
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)
    assert method.ctx.rng.initial_seed() == 7
    other = loop.fw_sample(data, make_config("demo", {"seed": 8, "fw_per_class": 3}), CPU)
    again = loop.fw_sample(data, cfg, CPU)
    assert torch.equal(again[0], method.ctx.fw_sample[0]) and not torch.equal(other[0], again[0])


# ---- sweep grids and executors -----------------------------------------------------------------------------
def test_a_grid_has_one_cell_per_run_id_and_absolute_data_roots(tmp_path, monkeypatch):
    from dfg.grid import expand_grid, parse_seeds, parse_sets

    monkeypatch.chdir(tmp_path)
    cells = expand_grid("g", ["demo"], ["dfg"], parse_seeds("0,0"), sets=parse_sets(["data_root=rel/d"]))
    assert len(cells) == 1
    assert cells[0].overrides()["data_root"] == str(tmp_path / "rel" / "d")
    plain = expand_grid("g", ["demo"], ["dfg"], [0])[0]
    assert plain.overrides()["data_root"] == str(tmp_path / "data")


def test_a_balanced_preset_has_no_majority_sets_to_sweep():
    from dfg.grid import expand_grid

    cells = expand_grid("g", ["stl10"], ["dfg"], [0], majority_combos="all")
    assert [(c.majority, c.config().imbalance) for c in cells] == [(None, "none")]


def test_a_run_a_live_worker_trains_is_busy_and_an_unfinished_runs_old_top1_is_not_its_outcome(tmp_path):
    """A run whose live worker reports is busy. A finished run resumed for more steps and stopped keeps the
    final.json of its first finish: the sweep must not report that top-1 as this stopped run's."""
    from dfg import executors

    run = Run.create(tmp_path, "r", make_config("demo").to_dict())
    run.set_status(state="running", pid=os.getpid(), heartbeat=time.time(), host=socket.gethostname())
    assert executors.action_for(run) == "busy"
    run.set_status(state="stopped", pid=None, step=3)
    run.write_json("final.json", {"last": {"top1": 0.5}})
    assert executors.action_for(run) == "resume"
    assert executors.outcome(run, 1.0)["top1"] is None
    run.set_status(state="finished")
    assert executors.outcome(run, 1.0)["top1"] == 0.5


def test_preflight_of_a_data_setting_checks_the_config_that_needs_the_source_model(monkeypatch):
    import dfg.preflight
    from dfg import executors

    checked = []
    monkeypatch.setattr(dfg.preflight, "preflight", lambda cfg: checked.append(cfg.method))
    executors.preflight_all([("a", make_config("demo", {"method": "original"})), ("b", make_config("demo")),
                             ("c", make_config("demo", {"method": "original"}))], log=lambda m: None)
    assert checked == ["dfg"]


def test_a_ray_address_is_refused_for_the_local_executor():
    from dfg import executors

    with pytest.raises(ValueError, match="--address is for --executor ray"):
        executors.make_executor("local", "ray://head:10001")


# ---- background jobs ---------------------------------------------------------------------------------------
def test_a_running_run_whose_pid_is_not_known_is_busy(tmp_path):
    run = Run.create(tmp_path, "r", make_config("demo").to_dict())
    assert jobs.worker_busy(run, {"state": "running"}) and jobs.worker_busy(run, {"state": "running", "pid": 42}) == 42


def test_a_worker_imports_this_checkout_first(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    assert jobs.pythonpath().split(os.pathsep) == [jobs.REPO_ROOT, "/elsewhere"]


def test_the_first_sigterm_runs_the_action_and_the_second_reaches_the_handler_found():
    got = []

    def previous(signum, frame):
        got.append("previous")
    old = signal.signal(signal.SIGTERM, previous)
    try:
        with jobs.on_first_sigterm(lambda: got.append("action")):
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            inside = signal.getsignal(signal.SIGTERM)
        after = signal.getsignal(signal.SIGTERM)
        with jobs.on_first_sigterm(lambda: got.append("unused")):  # no SIGTERM came: the old handler is back
            pass
        untouched = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert got == ["action", "previous"] and inside is previous and after is previous and untouched is previous
