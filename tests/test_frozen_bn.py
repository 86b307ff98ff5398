"""frozen_bn on ResNet-50 (the one backbone with BN): with `eval`, the BN layers of the parts that do not train
(fine-tuning's frozen layers, DIFA+cMWGAN's E/C in its later phases) normalise with their running statistics and
leave them as they are, so a frozen part computes exactly what the source computes; with `train` (the default)
they use batch statistics and their running statistics move."""
import pytest
import torch

from dfg.config import ConfigError, make_config
from dfg.methods import METHODS
from dfg.methods.base import SourceModel, TrainContext

from conftest import frozen_resnet50

CLASSES = 3


@pytest.fixture(scope="module")
def source():
    e, c = frozen_resnet50(CLASSES)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 32, 32, generator=g)  # 32 px keeps a ResNet-50 step cheap
    return e, c, x, torch.tensor([0, 1, 2, 0])


class Batches:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def next(self):
        return self.x, self.y


def make_method(source, method, **sets):
    e, c, x, y = source
    cfg = make_config("caltech256", {"method": method, "start_head": "source", "batch_size": 4, **sets})
    ctx = TrainContext(cfg=cfg, device=torch.device("cpu"), num_classes=CLASSES, in_channels=3,
                       rng=torch.Generator().manual_seed(0), fw_sample=(x, y),
                       source=SourceModel(e, c, torch.ones(CLASSES, 256)))
    return METHODS[method](ctx)


def bns(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def stats(module):
    return [t.clone() for m in bns(module) for t in (m.running_mean, m.running_var, m.num_batches_tracked)]


def same(a, b):
    return all(torch.equal(s, t) for s, t in zip(a, b))


def test_finetune_with_frozen_bn_eval_keeps_the_frozen_layers_statistics_and_outputs(source):
    e, c, x, y = source
    m = make_method(source, "finetune", frozen_bn="eval")
    frozen = [m.extractor, m.classifier[0], m.classifier[1]]  # E, layer2, layer3 (layer4 and fc train)
    before, layer4 = [stats(p) for p in frozen], stats(m.classifier[2])
    head = m.classifier[-1].weight.clone()
    for step in (1, 2):
        m.update(step, Batches(x, y))
        m.eval()  # an evaluation in between puts every net in eval mode and back
        m.train()
    m.update(3, Batches(x, y))
    assert all(not b.training for p in frozen for b in bns(p)) and all(b.training for b in bns(m.classifier[2]))
    assert all(same(stats(p), s) for p, s in zip(frozen, before))
    assert not same(stats(m.classifier[2]), layer4) and not torch.equal(m.classifier[-1].weight, head)
    with torch.no_grad():  # inside training, the frozen E is exactly the source's E
        assert torch.equal(m.extractor(x), e(x))
        assert torch.equal(m.classifier[1](m.classifier[0](m.extractor(x))), c[1](c[0](e(x))))


def test_finetune_with_the_default_frozen_bn_train_moves_the_frozen_layers_statistics(source):
    e, _, x, y = source
    m = make_method(source, "finetune")
    assert m.ctx.cfg.frozen_bn == "train"
    before = stats(m.extractor)
    m.update(1, Batches(x, y))
    assert all(b.training for b in bns(m.extractor) + bns(m.classifier))
    assert not same(stats(m.extractor), before)
    assert all(not p.requires_grad for p in m.extractor.parameters())  # still frozen: only the statistics moved
    with torch.no_grad():
        assert not torch.allclose(m.extractor(x), e(x))  # batch statistics, not the source's running ones


def test_difa_with_frozen_bn_eval_freezes_each_phase_fixed_networks(source):
    _, _, x, y = source
    m = make_method(source, "difa_cmwgan", frozen_bn="eval", steps=10, difa_phase_fraction=0.3, n_critic=2)
    assert [m.phase(s) for s in (2, 5, 8)] == [1, 2, 3] and m.fc_level
    ec = lambda: stats(m.extractor) + stats(m.classifier)  # noqa: E731
    before = ec()
    m.update(2, Batches(x, y))  # phase 1 fine-tunes E/C: every BN layer trains
    assert all(b.training for b in bns(m.extractor) + bns(m.classifier)) and not same(ec(), before)
    for step in (5, 8):  # phase 2 (E, C fixed) and phase 3 at the fc level (all but C's last Linear fixed)
        before, fc = ec(), m.classifier[-1].weight.clone()
        m.update(step, Batches(x, y))
        assert not any(b.training for b in bns(m.extractor) + bns(m.classifier))
        assert same(ec(), before)
        assert torch.equal(m.classifier[-1].weight, fc) == (step == 5)
    m.fc_level = False  # conv level: phase 3 trains all of C, E stays fixed
    m.set_bn_modes(8)
    assert not any(b.training for b in bns(m.extractor)) and all(b.training for b in bns(m.classifier))


def test_frozen_bn_rejects_an_unknown_mode_with_the_choices():
    with pytest.raises(ConfigError, match="frozen_bn='frozen' is invalid: choose train .* or eval"):
        make_config("demo", {"frozen_bn": "frozen"})
