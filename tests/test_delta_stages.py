"""DELTA's regulariser on ResNet-50's four stages (delta_layers=stages, the default there): the maps are the
conv3 outputs of each stage's last bottleneck, their channel weights come from removing each channel on the
source model, and a change deep in C moves the regulariser where E's output alone would not see it."""
import pytest
import torch
from torch.nn import functional as F

from dfg import losses
from dfg.config import from_dict, make_config
from dfg.filter_weights import loss_increase
from dfg.methods import METHODS
from dfg.methods.base import SourceModel, TrainContext
from dfg.networks import resnet_stage_maps, stage_views

from conftest import frozen_resnet50

CLASSES = 3


def stage_convs(e, c):
    return [e.last_block.conv3] + [c[s][-1].conv3 for s in range(3)]


@pytest.fixture(scope="module")
def net():
    e, c = frozen_resnet50(CLASSES)
    x = torch.randn(2, 3, 32, 32)   # 32 px keeps a ResNet-50 pass cheap; every stage still has a map
    y = torch.tensor([0, 2])
    with torch.no_grad():
        incs = [loss_increase(ev, rest, x, y) for ev, rest in stage_views(e, c)]
    return e, c, x, y, incs


def test_stage_maps_are_each_stages_last_conv3_in_the_forward_that_gives_the_logits(net):
    e, c, x, _, _ = net
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o)) for m in stage_convs(e, c)]
    try:
        with torch.no_grad():
            logits = c(e(x))
            plain = list(seen)
            feats, staged, maps = resnet_stage_maps(e, c, x)
    finally:
        for h in hooks:
            h.remove()
    assert [m.shape[1] for m in maps] == [256, 512, 1024, 2048]
    assert all(torch.equal(a, b) for a, b in zip(maps, plain))
    assert torch.equal(staged, logits) and torch.equal(feats, e(x))


def test_removing_a_stage_channel_in_one_batched_pass_equals_zeroing_it_in_a_full_forward(net):
    """The identity is exact, so it is checked in float64 (1e-9), where the summation order of the CPU's
    kernels cannot hide a wrong channel or stage; the float32 increases the run uses stay within float32
    noise of it (their 50-layer sums differ from a full forward's by ~1e-5 on some CPUs)."""
    import copy

    e32, c32, x32, y, incs32 = net
    e, c, x = copy.deepcopy(e32).double(), copy.deepcopy(c32).double(), x32.double()
    with torch.no_grad():
        incs = [loss_increase(ev, rest, x, y) for ev, rest in stage_views(e, c)]
        base = F.cross_entropy(c(e(x)), y, reduction="none")
    g = torch.Generator().manual_seed(1)
    for conv, inc, inc32 in zip(stage_convs(e, c), incs, incs32):
        assert inc.shape == inc32.shape == (2, conv.out_channels) and inc.dtype == torch.float64
        torch.testing.assert_close(inc32.double(), inc, atol=1e-4, rtol=1e-3)
        for j in torch.randperm(conv.out_channels, generator=g)[:3].tolist():
            def drop(m, i, o, j=j):
                o = o.clone()
                o[:, j] = 0
                return o
            hook = conv.register_forward_hook(drop)
            try:
                with torch.no_grad():
                    ref = F.cross_entropy(c(e(x)), y, reduction="none") - base
            finally:
                hook.remove()
            torch.testing.assert_close(inc[:, j], ref, atol=1e-9, rtol=1e-7)


def delta_method(e, c, x, y, **sets):
    cfg = make_config("caltech256", {"method": "delta", "start_head": "source", **sets})
    ctx = TrainContext(cfg=cfg, device=torch.device("cpu"), num_classes=CLASSES, in_channels=3,
                       rng=torch.Generator().manual_seed(0), fw_sample=(x, y),
                       source=SourceModel(e, c, torch.ones(CLASSES, 256)))
    m = METHODS["delta"](ctx)
    m.eval()  # BN on running statistics, as the source: an unchanged target is then at distance zero
    return m


def test_delta_on_resnet50_weights_and_regularises_all_four_stages(net):
    e, c, x, y, incs = net
    staged = delta_method(e, c, x, y)
    assert staged.reg_stages and len(staged.reg_weights) == 4
    for w, inc in zip(staged.reg_weights, incs):
        torch.testing.assert_close(w, losses.delta_attention(inc.mean(0)))
    only_e = delta_method(e, c, x, y, delta_layers="extractor")
    assert not only_e.reg_stages and len(only_e.reg_weights) == 1

    def penalty(m):
        _, _, maps = m.forward_with_maps(x)
        head = m.classifier[-1]
        return m.transfer_penalty(x, maps) - m.ctx.cfg.reg_beta * losses.l2([head.weight, head.bias])

    assert penalty(staged).abs().item() < 1e-6 and penalty(only_e).abs().item() < 1e-6
    for m in (staged, only_e):
        with torch.no_grad():
            m.classifier[1][-1].conv1.weight.mul_(1.5)  # inside layer3: E's output does not change
    moved = penalty(staged)
    assert moved.item() > 1e-3 and penalty(only_e).abs().item() < 1e-6
    with torch.no_grad():  # the two maps after the change carry it, written out
        t, s = resnet_stage_maps(staged.extractor, staged.classifier, x)[2], resnet_stage_maps(e, c, x)[2]
    want = sum(losses.delta_feature_distance(a, b, w) for a, b, w in zip(t, s, staged.reg_weights))
    assert [torch.equal(a, b) for a, b in zip(t, s)] == [True, True, False, False]
    torch.testing.assert_close(moved, staged.ctx.cfg.reg_alpha * want)
    moved.backward()
    assert staged.classifier[1][-1].conv1.weight.grad.abs().sum() > 0


def test_delta_layers_auto_stages_only_on_resnet50_and_old_runs_keep_e():
    assert make_config("caltech256").delta_layers == "auto" == make_config("demo").delta_layers
    with pytest.raises(Exception, match="delta_layers='stages' is invalid: stages exist for backbone=resnet50"):
        make_config("demo", {"delta_layers": "stages"})
    old = make_config("food101", {"method": "delta"}).to_dict()
    del old["delta_layers"]
    assert from_dict(old).delta_layers == "extractor"
