"""Every method through the real loop on tiny offline data; Algorithm 1's schedule; fine-tuning's
frozen layers; the official-code switches each change behaviour; seeded runs reproduce."""
import math

import pytest
import torch

from dfg.config import OFFICIAL_SWITCHES, make_config
from dfg.loop import load_data, setup, train
from dfg.methods import METHODS
from dfg.runstore import Run

from conftest import small_bn_nets

TINY = dict(steps=6, pretrain_steps=30, head_refit_steps=5, log_every=2, eval_every=3, ckpt_every=3,
            limit_test=100, n_w=2, n_c1=2, n_c2=3, fw_per_class=3, threads=1, batch_size=16)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def tiny(data_root, **kw):
    return make_config("demo", {**TINY, "data_root": data_root, **kw})


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_and_reports_all_metrics(method, data_root, tmp_path):
    cfg = tiny(data_root, method=method, difa_phase_fraction=0.34)
    run = Run.create(tmp_path, f"t-{method}", cfg.to_dict())
    status = train(cfg, run, log=lambda m: None)
    assert status["state"] == "finished", status
    rows, _ = run.read_metrics()
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [2, 3, 4, 6]  # log_every=2 plus checkpoint steps
    for r in train_rows:
        assert all(math.isfinite(v) for k, v in r.items() if isinstance(v, float))
    final = [r for r in rows if r["kind"] == "eval"][-1]
    for key in ("top1", "balanced_acc", "macro_f1", "minority_recall"):
        assert 0.0 <= final[key] <= 1.0
    assert len(final["per_class_recall"]) == 10 and final["n"] == 100
    assert sum(map(sum, final["confusion"])) == 100
    if method == "delta":  # DELTA's regulariser is active and positive once E moves away from E_S
        assert train_rows[-1]["L_reg"] > 0


def test_dfg_logs_every_loss_of_algorithm_1(data_root, tmp_path):
    cfg = tiny(data_root, log_every=6, ckpt_every=6, eval_every=6)
    run = Run.create(tmp_path, "t-losses", cfg.to_dict())
    train(cfg, run, log=lambda m: None)
    row = [r for r in run.read_metrics()[0] if r["kind"] == "train"][-1]
    for key in ("L_D", "GP", "W_dist", "L_G", "L_cC_G", "L_E", "L_rC", "L_gC", "L_cC", "L_C"):
        assert key in row, key
    # filter weights: W(E) recorded at step 0 and every n_w=2 steps
    assert run.filter_weight_steps() == [0, 2, 4, 6]
    w = run.load_filter_weights(4)
    assert w["w_star"].shape == (10, 6)
    assert abs(w["w_target"].mean(1) - 1).max() < 1e-5


@pytest.mark.parametrize("ec_every_nc1", [False, True])
def test_algorithm_1_update_counts(ec_every_nc1, data_root):
    """nD critic updates per step, one G update (+1 every nC1), E and C every step (official_ec_every_nc1:
    only on the nC1 steps, as the official code does), C again every nC2."""
    cfg = tiny(data_root, n_critic=3, n_c1=2, n_c2=3, official_ec_every_nc1=ec_every_nc1)
    _, method = setup(cfg, torch.device("cpu"), log=lambda m: None)
    counts = {k: 0 for k in method.opts}
    for name, opt in method.opts.items():
        opt.step = (lambda f, n: (lambda *a, **k: (counts.__setitem__(n, counts[n] + 1), f(*a, **k))[1]))(opt.step, name)
    drawn = []

    class Stream:
        def __init__(self, inner):
            self.inner = inner

        def next(self):
            drawn.append(1)
            return self.inner.next()

    from dfg.data import BatchStream
    stream = Stream(BatchStream(load_data(cfg).train, cfg.batch_size, seed=0))
    for step in range(1, 7):
        method.train_step(step, stream)
    assert counts["critic"] == 3 * 6
    assert counts["generator"] == 6 + 3          # steps 2, 4, 6 add the Eq. 4c update
    ec = 3 if ec_every_nc1 else 6                # steps 2, 4, 6 or every step
    assert counts["extractor"] == ec
    assert counts["classifier"] == ec + 2        # steps 3, 6 add the full Eq. 4 update
    assert len(drawn) == (3 + 1) * 6             # nD critic batches + one for G/E/C per step


def test_critic_phase_makes_all_fakes_first_on_the_cpu_with_the_same_numbers(data_root, monkeypatch):
    """The CPU critic phase makes its nD fakes before its nD updates (a cache win) and draws z, ŷ, ε in the
    same order as one fake per update, so both orders leave D, G's BN statistics and the noise stream equal."""
    from dfg.data import BatchStream
    from dfg.methods import dfg as dfg_module
    cfg = tiny(data_root, n_critic=3)
    finals = []
    for limit in (0, dfg_module.FAKES_FIRST_BYTES):  # 0: one G forward just before each update
        monkeypatch.setattr(dfg_module, "FAKES_FIRST_BYTES", limit)
        _, method = setup(cfg, torch.device("cpu"), log=lambda m: None)
        made = []
        generate = method.generate
        method.generate = lambda z, y: (made.append(len(updates)), generate(z, y))[1]
        updates = []
        step = method._step
        method._step = lambda names: (updates.append(names), step(names))[1]
        stream = BatchStream(load_data(cfg).train, cfg.batch_size, seed=0)
        method.update_critic(stream)
        finals.append(([p.detach().clone() for p in method.critic.parameters()],
                       [b.clone() for b in method.generator.buffers()], method.ctx.rng.get_state(), made))
    (d1, bn1, rng1, made1), (d2, bn2, rng2, made2) = finals
    assert made1 == [0, 1, 2] and made2 == [0, 0, 0]  # interleaved vs all fakes first
    assert all(torch.equal(a, b) for a, b in zip(d1, d2))
    assert all(torch.equal(a, b) for a, b in zip(bn1, bn2))
    assert torch.equal(rng1, rng2)


def test_critic_phase_runs_nd_updates_on_batches_shorter_than_batch_size(data_root, monkeypatch):
    """A training set smaller than the batch gives shorter batches: E's one forward of all nD batches is cut
    back at their own sizes, so D still gets nD updates, each on one whole batch and as many fakes."""
    from dfg import wgan_gp
    from dfg.data import BatchStream
    cfg = tiny(data_root, n_critic=5)  # batch_size 16
    _, method = setup(cfg, torch.device("cpu"), log=lambda m: None)
    seen = []
    closed_form = wgan_gp.critic_loss_and_grads
    monkeypatch.setattr(wgan_gp, "critic_loss_and_grads", lambda D, real, fake, mixed, lam: (
        seen.append((len(real), len(fake), len(mixed))), closed_form(D, real, fake, mixed, lam))[1])
    method.update_critic(BatchStream(load_data(cfg).train, 6, seed=0))
    assert seen == [(6, 6, 6)] * 5


def test_dfg_starts_from_the_source_weights_alone(data_root):
    """Alg. 1 lines 2-4: before step 1, W* is W(E_S) thresholded at δ, whatever ρ, even when C's head starts
    random (a W(E) measured through that head would be noise); step 0's record has W(E) = W(E_S)."""
    cfg = tiny(data_root, start_head="random", rho=0.5)
    _, method = setup(cfg, torch.device("cpu"), log=lambda m: None)
    method.on_start()
    w_s = method.w_source
    assert not torch.equal(w_s, torch.ones_like(w_s))  # measured on the source model
    assert torch.equal(method.w_target, w_s)
    assert torch.equal(method.w_star, torch.where(w_s >= cfg.delta, w_s, torch.zeros_like(w_s)))


def test_finetune_frozen_parameters_do_not_move(data_root):
    cfg = tiny(data_root, method="finetune")
    _, method = setup(cfg, torch.device("cpu"), log=lambda m: None)
    frozen = {n: p.detach().clone() for n, p in method.extractor.named_parameters()}
    head = [p.detach().clone() for p in method.classifier.parameters()]
    from dfg.data import BatchStream
    stream = BatchStream(load_data(cfg).train, cfg.batch_size, seed=0)
    for step in range(1, 4):
        method.train_step(step, stream)
    assert all(torch.equal(p, frozen[n]) for n, p in method.extractor.named_parameters())
    assert any(not torch.equal(a, b) for a, b in zip(head, method.classifier.parameters()))
    assert "extractor" not in method.opts


@pytest.mark.parametrize("level,critic", [("fc", "conditional"), ("conv", "conditional"), ("fc", "unconditional")])
def test_difa_generates_at_its_level_and_each_phase_trains_only_its_networks(level, critic, data_root):
    """fc (refs [14, 15]): G makes the 84-d input of LeNet's last Linear and phase 3 trains only that Linear.
    conv: G makes E's 6x14x14 maps and phase 3 trains all of C. A conditional D (the default) trains through
    autograd, an unconditional one through the written-out WGAN-GP gradients. In phase 2 only G and D move;
    in phase 3 E, G and D stay fixed."""
    from dfg import wgan_gp
    from dfg.data import BatchStream
    cfg = tiny(data_root, method="difa_cmwgan", difa_level=level, steps=9, difa_phase_fraction=1 / 3,
               difa_critic=critic)
    _, method = setup(cfg, torch.device("cpu"), log=lambda m: None)
    x, _ = BatchStream(load_data(cfg).train, 4, seed=0).next()
    fake = method.generate(*torch.rand(4, method.generator.noise_dim).mul(2).sub(1).split(4), torch.arange(4))
    assert fake.shape == method.features(x).shape == ((4, 84) if level == "fc" else (4, 6, 14, 14))
    assert (fake >= 0).all() or level == "conv"  # the real vector follows a ReLU
    assert wgan_gp.supports_closed_form(method.critic) == (critic == "unconditional")
    snap = lambda net: [p.detach().clone() for p in net.parameters()]  # noqa: E731
    moved = lambda net, old: [not torch.equal(a, b) for a, b in zip(old, net.parameters())]  # noqa: E731
    stream = BatchStream(load_data(cfg).train, cfg.batch_size, seed=0)
    for step in range(1, 4):  # phase 1
        method.train_step(step, stream)
    nets = {"E": method.extractor, "C": method.classifier, "G": method.generator, "D": method.critic}
    before = {k: snap(n) for k, n in nets.items()}
    for step in range(4, 7):  # phase 2
        assert method.phase(step) == 2
        method.train_step(step, stream)
    assert not any(moved(nets["E"], before["E"]) + moved(nets["C"], before["C"]))
    # D's score bias cancels in Eq. 1 (E[D(fake)] − E[D(real)], and the penalty's gradient ignores it)
    d_moved = dict(zip([n for n, _ in method.critic.named_parameters()], moved(nets["D"], before["D"])))
    score_bias = f"net.{len(method.critic.net) - 1}.bias"
    assert all(moved(nets["G"], before["G"])) and d_moved.pop(score_bias) is False and all(d_moved.values())
    assert ("embed.weight" in d_moved) == (critic == "conditional")
    before = {k: snap(n) for k, n in nets.items()}
    for step in range(7, 10):  # phase 3
        assert method.phase(step) == 3
        method.train_step(step, stream)
    assert not any(moved(nets["E"], before["E"]) + moved(nets["G"], before["G"]) + moved(nets["D"], before["D"]))
    c_moved = moved(nets["C"], before["C"])
    assert c_moved == ([False] * (len(c_moved) - 2) + [True, True] if level == "fc" else [True] * len(c_moved))


def test_difa_s_conditional_critic_sees_each_fake_with_its_real_row_s_class(data_root):
    """Phase 2 with difa_critic=conditional: every critic update generates its fakes with the classes of its real
    batch and scores both with them; G's own update draws ŷ with the training set's class frequencies."""
    from dfg.data import BatchStream
    cfg = tiny(data_root, method="difa_cmwgan", steps=9, difa_phase_fraction=1 / 3)
    _, method = setup(cfg, torch.device("cpu"), log=lambda m: None)
    assert method.critic.embed is not None and method.ctx.class_counts
    seen, scored, generate, critic = [], [], method.generate, method.critic.forward
    method.generate = lambda z, y: seen.append(y.clone()) or generate(z, y)
    method.critic.forward = lambda f, labels=None: scored.append(labels) or critic(f, labels)
    batches = BatchStream(load_data(cfg).train, cfg.batch_size, seed=0)
    expected = BatchStream(load_data(cfg).train, cfg.batch_size, seed=0)
    method.update_critic(batches)
    real_labels = [expected.next()[1] for _ in range(cfg.n_critic)]
    assert len(seen) == cfg.n_critic and all(torch.equal(a, b) for a, b in zip(seen, real_labels))
    assert all(y is not None for y in scored)
    counts = torch.tensor(method.ctx.class_counts, dtype=torch.float64)
    _, y_hat = method.gan_noise(20000)
    freq = torch.bincount(y_hat, minlength=len(counts)).double() / 20000
    assert (freq - counts / counts.sum()).abs().max() < 0.01 and freq.max() / freq.min() > 5  # 10:1 demo


@pytest.mark.parametrize("conditional", [True, False])
def test_a_projection_critic_teaches_g_each_class_on_imbalanced_data(conditional):
    """Two classes at 80:20 whose features differ. Against a conditional (projection) critic, G(z, k) learns
    class k's features; against one that sees features only, nothing ties ŷ to a class and G makes the
    majority's features for both."""
    from dfg import losses, wgan_gp
    from dfg.gan import FeatureCritic, FeatureGenerator
    torch.manual_seed(0)
    mu = torch.zeros(2, 8)
    mu[0, ::2], mu[1, 1::2] = 3.0, 3.0
    G = FeatureGenerator(8, num_classes=2, init="xavier", noise_dim=16, hidden=64)
    D = FeatureCritic(8, init="xavier", hidden=64, num_classes=2 if conditional else 0)
    opt_g, opt_d = (torch.optim.Adam(n.parameters(), 1e-3, betas=(0.5, 0.9)) for n in (G, D))
    score = (lambda f, y: D(f, y)) if conditional else (lambda f, y: D(f))
    for _ in range(150):
        for _ in range(5):
            y = (torch.rand(64) < 0.2).long()
            real = torch.relu(mu[y] + 0.5 * torch.randn(64, 8))
            with torch.no_grad():
                fake = G(torch.rand(64, 16) * 2 - 1, y)
            opt_d.zero_grad(set_to_none=True)
            wgan_gp.reference_critic_loss(D, real, fake, losses.interpolate(real, fake), 10.0,
                                          labels=y if conditional else None).loss.backward()
            opt_d.step()
        y = (torch.rand(64) < 0.2).long()
        opt_g.zero_grad(set_to_none=True)
        losses.generator_loss(score(G(torch.rand(64, 16) * 2 - 1, y), y)).backward()
        opt_g.step()
    G.eval()  # BN on its running statistics: a batch of one class alone would normalise the class away
    with torch.no_grad():
        means = [G(torch.rand(500, 16) * 2 - 1, torch.full((500,), k)).mean(0) for k in range(2)]
    to_own = [(means[k] - mu[k]).norm().item() for k in range(2)]
    if conditional:
        assert max(to_own) < 1.5, to_own  # the class means lie 6 apart
    else:
        assert to_own[1] > 5, to_own  # the minority's ŷ still gives majority features


def test_a_difa_run_recorded_before_difa_level_existed_resumes_at_the_conv_level():
    from dfg.config import from_dict
    old = make_config("demo", {"method": "difa_cmwgan"}).to_dict()
    del old["difa_level"]
    assert from_dict(old).difa_level == "conv" and make_config("demo", {}).difa_level == "fc"


@pytest.mark.parametrize("backbone, trainable_convs, frozen_convs_in_c, first_trainable", [
    ("lenet", [(16, 6, 5, 5)], 0, "0"),                           # conv2 (C's only conv) + FC 120/84/10
    ("vgg16", [(512, 512, 3, 3)] * 3, 8, "19"),                   # block 5 (Table A.5's last 3×conv) + FC head
    ("resnet50", None, None, "2"),                                # layer4 ("Residual Block #4", Table A.7) + fc
])
def test_finetune_trains_from_the_last_conv_block_of_each_backbone(backbone, trainable_convs, frozen_convs_in_c,
                                                                   first_trainable):
    """§4.2: Fine-tuning fixes the weights before the last convolution block and fine-tunes the rest. For each
    backbone, everything in E and in C before that block is frozen; the block and the head train."""
    from types import SimpleNamespace

    from dfg.methods.baselines import FineTune
    from dfg.networks import build_backbone

    torch.manual_seed(0)
    e, c = build_backbone(backbone, num_classes=10)
    FineTune.configure_trainable(SimpleNamespace(ctx=SimpleNamespace(cfg=SimpleNamespace(backbone=backbone)),
                                                 extractor=e, classifier=c))
    assert not any(p.requires_grad for p in e.parameters())
    trainable = [n for n, p in c.named_parameters() if p.requires_grad]
    assert trainable[0].split(".")[0] == first_trainable
    assert all(p.requires_grad for p in list(c.children())[-1].parameters())  # the head
    assert all(p.requires_grad == (int(n.split(".")[0]) >= int(first_trainable)) for n, p in c.named_parameters())
    convs = [m for m in c.modules() if isinstance(m, torch.nn.Conv2d)]
    if trainable_convs is not None:
        assert [tuple(m.weight.shape) for m in convs if m.weight.requires_grad] == trainable_convs
        assert sum(not m.weight.requires_grad for m in convs) == frozen_convs_in_c
    else:  # ResNet-50: layer2 and layer3 frozen, all of layer4 trains
        assert not any(p.requires_grad for p in list(c.children())[0].parameters())
        assert not any(p.requires_grad for p in list(c.children())[1].parameters())
        assert all(p.requires_grad for p in list(c.children())[2].parameters())
        assert list(c.children())[2][0].conv1.in_channels == 1024  # layer4 takes layer3's 14×14×1024


def test_same_seed_same_metrics(data_root, tmp_path):
    finals = []
    for i in range(2):
        cfg = tiny(data_root, seed=3)
        run = Run.create(tmp_path, f"rep-{i}", cfg.to_dict())
        train(cfg, run, log=lambda m: None)
        rows = run.read_metrics()[0]
        finals.append(([r for r in rows if r["kind"] == "eval"][-1],
                       [{k: v for k, v in r.items() if k not in ("time", "steps_per_s")}
                        for r in rows if r["kind"] == "train"]))
    (e1, t1), (e2, t2) = finals
    assert t1 == t2
    assert {k: v for k, v in e1.items() if k != "time"} == {k: v for k, v in e2.items() if k != "time"}


@pytest.mark.parametrize("switch", OFFICIAL_SWITCHES)
def test_each_official_switch_changes_training(switch, data_root):
    """Each switch is read by the code and changes what happens (losses or weights) within 4 steps."""
    results = []
    for on in (False, True):
        cfg = tiny(data_root, **{switch: on}, n_w=1, rho=0.5)
        _, method = setup(cfg, torch.device("cpu"), log=lambda m: None)
        if switch == "official_loss_gate":
            method.last_loss_e = 1.0  # the gate blocks recomputation while L_E >= 0.05
        from dfg.data import BatchStream
        stream = BatchStream(load_data(cfg).train, cfg.batch_size, seed=0)
        method.on_start()
        outs = [method.train_step(s, stream) for s in range(1, 5)]
        results.append((outs, method.w_star.clone()))
    (o1, w1), (o2, w2) = results
    assert o1 != o2 or not torch.equal(w1, w2)


def test_the_loss_gate_recomputes_w_only_below_0_05_and_then_in_train_mode(data_root, monkeypatch):
    """official_loss_gate (DESIGN §2 item 7): W(E) is recomputed only once the last L_E < 0.05, and that pass runs
    in train mode (eval_mode=False); without the switch, every nW steps in eval mode."""
    from dfg.methods import dfg as dfg_module
    calls = []
    compute = dfg_module.compute_class_weights
    monkeypatch.setattr(dfg_module, "compute_class_weights",
                        lambda *a, **k: calls.append(k["eval_mode"]) or compute(*a, **k))
    for gate in (False, True):
        _, m = setup(tiny(data_root, official_loss_gate=gate), torch.device("cpu"), log=lambda m: None)
        calls.clear()
        m.last_loss_e = 0.5
        m.recompute_weights(2)
        m.last_loss_e = 0.01
        m.recompute_weights(4)
        assert calls == ([False] if gate else [True, True]), gate


@pytest.mark.parametrize("reg", ["delta", "l2sp"])
def test_dfg_with_a_transfer_regulariser(reg, data_root, tmp_path):
    cfg = tiny(data_root, transfer_reg=reg, reg_alpha=0.5)
    run = Run.create(tmp_path, f"reg-{reg}", cfg.to_dict())
    assert train(cfg, run, log=lambda m: None)["state"] == "finished"
    rows = [r for r in run.read_metrics()[0] if r["kind"] == "train"]
    assert all(r["L_reg"] > 0 and math.isfinite(r["L_reg"]) for r in rows[1:])


@pytest.mark.parametrize("reg", ["delta", "l2sp"])
def test_the_transfer_regulariser_s_value_by_hand(reg, data_root):
    """reg_alpha × the distance to the source (DELTA: E(x) against E_S(x) with DELTA's channel weights;
    L2-SP: ½‖θ − θ_S‖² over every parameter but the head) + reg_beta × ½‖head‖². E's last conv moved by
    +0.1, so the distance is not 0; reg_alpha ≠ reg_beta, so swapping them shows."""
    from dfg.networks import last_linear
    cfg = tiny(data_root, transfer_reg=reg, reg_alpha=0.7, reg_beta=0.2)
    _, m = setup(cfg, torch.device("cpu"), log=lambda m: None)
    src = m.ctx.source
    x = m.ctx.fw_sample[0][:8]
    assert torch.equal(m.extractor(x), src.extractor(x))  # E starts as E_S
    with torch.no_grad():
        m.extractor.last_conv.weight.add_(0.1)
    head = last_linear(m.classifier)
    head_l2 = 0.5 * (head.weight.pow(2).sum() + head.bias.pow(2).sum())
    if reg == "delta":  # DELTA's channel weights: softmax of the z-scored mean loss increase / 5, on the source
        from dfg import filter_weights, losses
        inc = filter_weights.loss_increase(src.extractor.eval(), src.classifier.eval(), *m.ctx.fw_sample).mean(0)
        torch.testing.assert_close(m.reg_weights[0], losses.delta_attention(inc))
        assert m.reg_weights[0].std() > 1e-3  # not uniform
        feats, _, maps = m.forward_with_maps(x)
        per_channel = (feats.detach() - src.extractor(x)).pow(2).flatten(2).mean(2)  # (B, nf): ‖·‖²/(h·w)
        dist = 0.5 * (per_channel * feats.shape[1] * m.reg_weights[0]).sum()
    else:
        maps = []
        dist = 0.5 * 0.1 ** 2 * m.extractor.last_conv.weight.numel()
    assert dist > 1e-4
    got = m.transfer_penalty(x, maps).item()
    assert got == pytest.approx(0.7 * float(dist) + 0.2 * head_l2.item(), rel=1e-5)


@pytest.mark.parametrize("setting, expected", [
    ("auto", dict(dfg="delta", delta="delta", finetune="none", difa_cmwgan="none", original="none")),
    ("l2sp", dict(dfg="l2sp", finetune="l2sp", difa_cmwgan="l2sp")),
    ("none", dict(dfg="none")),
])
def test_transfer_reg_auto_is_each_methods_own(setting, expected, data_root):
    """auto: DFG regularises E/C towards the source like DELTA (§3), the other baselines do not; an explicit
    choice applies to every method but DELTA, whose regulariser is the method: another one is refused there
    (config.json would record a regulariser the run does not use)."""
    from dfg.config import ConfigError
    if setting != "auto":
        with pytest.raises(ConfigError, match="transfer_reg.*use auto or delta"):
            tiny(data_root, method="delta", transfer_reg=setting)
    for method, kind in expected.items():
        _, m = setup(tiny(data_root, method=method, transfer_reg=setting), torch.device("cpu"), log=lambda m: None)
        assert m.reg_kind == kind, method
        assert (m.reg_weights is not None) == (kind == "delta")


@pytest.mark.parametrize("preset, refit", [("svhn", False), ("cinic10", False), ("fmnist", True),
                                           ("stl10", True), ("caltech256", True), ("demo", False)])
def test_the_source_head_is_re_fit_only_when_the_classes_differ(preset, refit):
    from dfg.data.registry import get_spec
    from dfg.source import refit_needed
    cfg = make_config(preset)
    target = get_spec(cfg.dataset).class_names
    assert refit_needed(cfg, target) is refit
    assert refit_needed(make_config(preset, {"head_refit": "always"}), target)
    if len(target) == 10:
        assert not refit_needed(make_config(preset, {"head_refit": "never"}), target)


def test_head_refit_never_with_other_class_counts_says_what_to_set():
    from dfg.source import SourceError, refit_needed
    with pytest.raises(SourceError, match="keeps the source head's 1000 classes, but the target 'caltech256' "
                                          "has 257: set head_refit=auto"):
        refit_needed(make_config("caltech256", {"head_refit": "never"}), tuple(map(str, range(257))))


def test_source_pretraining_is_plain_adam_on_the_source_classes(tmp_path):
    """E_S, C_S after 3 steps are those of 3 plain Adam steps (lr 1e-3) on cross-entropy from SOURCE_SEED's init,
    on the source stream's batches, each step's gradient its own."""
    from torch.nn import functional as F

    from dfg.data import BatchStream, build_source_data
    from dfg.networks import build_backbone
    from dfg.source import SOURCE_SEED, pretrain_source
    cfg = tiny(str(tmp_path), pretrain_steps=3)
    e, c = pretrain_source(cfg, 1, torch.device("cpu"), log=lambda m: None)
    data = build_source_data(cfg.source, backbone=cfg.backbone, root=cfg.data_root, seed=SOURCE_SEED,
                             n_per_class=cfg.source_per_class)
    torch.manual_seed(SOURCE_SEED)
    e2, c2 = build_backbone(cfg.backbone, num_classes=data.num_classes, in_channels=1)
    start = [p.detach().clone() for p in e2.parameters()]
    opt = torch.optim.Adam(list(e2.parameters()) + list(c2.parameters()), lr=1e-3)
    stream = BatchStream(data.train, 64, seed=SOURCE_SEED)
    for _ in range(3):
        x, y = stream.next()
        opt.zero_grad()
        F.cross_entropy(c2(e2(x)), y).backward()
        opt.step()
    assert not all(torch.equal(a, b) for a, b in zip(start, e2.parameters()))
    for a, b in zip([*e.parameters(), *c.parameters()], [*e2.parameters(), *c2.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_w_of_e_s_is_the_filter_weights_of_the_source_model_on_the_target_sample(data_root):
    """Alg. 1 line 2: W(E_S) = Eq. 5-6 on E_S and C_S (head re-fit when needed) over the target's class-balanced
    sample, with the run's sign and bias switches; the other sign gives other weights."""
    from dfg.filter_weights import compute_class_weights
    cfg = tiny(data_root)
    _, m = setup(cfg, torch.device("cpu"), log=lambda m: None)
    src, (x, y) = m.ctx.source, m.ctx.fw_sample
    for flip in (False, True):
        w = compute_class_weights(src.extractor, src.classifier, x, y, 10, flip_sign=flip)
        if flip:
            assert (w - src.class_weights).abs().max() > 1e-3
        else:
            torch.testing.assert_close(src.class_weights, w)


def test_the_head_re_fit_leaves_all_but_the_new_head_and_bn_statistics_as_they_were():
    """With BN in C (ResNet-50), the re-fit reads features with C_S's running statistics and keeps them; only the
    new head differs, and the nets end in eval mode."""
    from dfg.data import TensorImages
    from dfg.source import refit_head
    torch.manual_seed(5)
    e, c = small_bn_nets(5)
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    kept = {f"{n}.{k}": v.clone() for n, net in (("e", e), ("c", c)) for k, v in net.state_dict().items()}
    refit_head(e.train(), c.train(), TensorImages(images, torch.arange(40) % 3), 3,
               make_config("demo", {"head_refit_steps": 4}), torch.device("cpu"))
    assert not e.training and not c.training and c[-1].out_features == 3
    now = {f"{n}.{k}": v for n, net in (("e", e), ("c", c)) for k, v in net.state_dict().items()}
    assert {k for k in now if not k.startswith("c.5.")} == {k for k in kept if not k.startswith("c.5.")}
    assert all(torch.equal(kept[k], now[k]) for k in kept if not k.startswith("c.5."))
    assert int(now["c.1.num_batches_tracked"]) == 0


def test_a_kept_source_head_is_the_pretrained_one_and_a_re_fit_one_is_new(data_root):
    from dfg.source import pretrain_source
    cfg = tiny(data_root)  # glyphs -> MNIST 5k: the same digits
    e, c = pretrain_source(cfg, 1, torch.device("cpu"))
    pretrained = [p.detach().clone() for p in c[-1].parameters()]
    _, kept = setup(cfg, torch.device("cpu"), log=lambda m: None)
    kept_head = list(kept.ctx.source.classifier[-1].parameters())
    assert all(torch.equal(a, b) for a, b in zip(pretrained, kept_head))
    _, refit = setup(tiny(data_root, head_refit="always"), torch.device("cpu"), log=lambda m: None)
    assert not torch.equal(pretrained[0], refit.ctx.source.classifier[-1].weight)


@pytest.mark.parametrize("method", ["finetune", "delta", "dfg"])
def test_a_random_start_head_is_fresh_and_the_rest_is_the_source(method, data_root):
    """start_head=random (App. A, ResNet-50): E and C start from the source except C's last layer, which is
    freshly initialised (seeded); W(E_S) is still computed with C_S's head."""
    cpu, quiet = torch.device("cpu"), (lambda m: None)
    _, fresh = setup(tiny(data_root, method=method, start_head="random"), cpu, log=quiet)
    _, kept = setup(tiny(data_root, method=method), cpu, log=quiet)
    src = fresh.ctx.source
    for a, b in zip(fresh.extractor.state_dict().values(), src.extractor.state_dict().values()):
        assert torch.equal(a, b)
    head = f"{len(fresh.classifier) - 1}."
    c, c_src = fresh.classifier.state_dict(), src.classifier.state_dict()
    assert all(torch.equal(c[k], c_src[k]) for k in c if not k.startswith(head))
    w, b = fresh.classifier[-1].weight, fresh.classifier[-1].bias
    assert not torch.equal(w, src.classifier[-1].weight) and torch.count_nonzero(b) == 0
    xavier_std = math.sqrt(2 / (w.shape[0] + w.shape[1]))  # LeNet's init (Xavier normal), 840 weights
    assert abs(w.std().item() / xavier_std - 1) < 0.15
    assert torch.equal(kept.classifier[-1].weight, src.classifier[-1].weight)  # the default starts from C_S's
    assert torch.equal(kept.ctx.source.class_weights, src.class_weights)
    _, again = setup(tiny(data_root, method=method, start_head="random"), cpu, log=quiet)
    assert torch.equal(again.classifier[-1].weight, w)  # seeded


def test_eq_4c_is_one_concatenated_batch_and_with_bn_4a_4b_get_their_own(data_root):
    """Eq. 4c's x̃ = E(x) ⊕ G(z, ŷ) goes through C as one batch of 2B (with BN in C, its statistics are the
    mixed batch's); with BN, the nC2 update's 4a and 4b use C on the real and the generated batch alone.
    LeNet's C has no BN, so both ways give the same numbers: the split path is checked against the joint one."""
    from dfg.data import BatchStream
    cfg = tiny(data_root, n_c1=1, n_c2=1, n_critic=1)
    b, seen, outs = cfg.batch_size, {}, {}
    for bn in (False, True):
        torch.manual_seed(0)
        _, m = setup(cfg, torch.device("cpu"), log=lambda m: None)
        m.c_has_bn = bn
        seen[bn] = []
        m.classifier.register_forward_pre_hook(lambda mod, inp, bn=bn: seen[bn].append(inp[0].shape[0]))
        outs[bn] = m.update(1, BatchStream(load_data(cfg).train, b, seed=0))
    # nC1 pass (2B), E's and C's updates (B, B), nC2 pass (2B, then B and B with BN)
    assert seen[False] == [2 * b, b, b, 2 * b]
    assert seen[True] == [2 * b, b, b, 2 * b, b, b]
    for key in ("L_cC_G", "L_rC", "L_gC", "L_cC", "L_C"):
        assert outs[True][key].item() == pytest.approx(outs[False][key].item(), rel=1e-6), key


def test_evaluation_predicts_in_eval_mode_and_puts_the_nets_back(data_root):
    from dfg.loop import run_eval
    data, m = setup(tiny(data_root), torch.device("cpu"), log=lambda m: None)
    seen, predict = [], m.predict
    m.predict = lambda x: seen.append([net.training for net in m.nets.values()]) or predict(x)
    m.critic.eval()  # a net in eval mode before stays so
    run_eval(m, data, torch.device("cpu"))
    assert seen and not any(any(modes) for modes in seen)
    assert {k: net.training for k, net in m.nets.items()} == dict(extractor=True, classifier=True, generator=True,
                                                                   critic=False)


def test_validation_split_selects_on_val_never_on_test(data_root, tmp_path):
    cfg = tiny(data_root, val_fraction=0.2, method="original")
    run = Run.create(tmp_path, "val", cfg.to_dict())
    train(cfg, run, log=lambda m: None)
    rows = run.read_metrics()[0]
    val = [r for r in rows if r["kind"] == "eval" and r["split"] == "val"]
    test = [r for r in rows if r["kind"] == "eval" and r["split"] == "test"]
    assert [r["step"] for r in val] == [r["step"] for r in test] == [3, 6]
    n_val = len(load_data(cfg).val)  # each split is evaluated on its own images
    assert n_val != 100 and all(r["n"] == n_val == sum(map(sum, r["confusion"])) for r in val)
    assert all(r["n"] == 100 for r in test)  # limit_test
    best = run.read_json("final.json")["best_on_val"]
    chosen = max(val, key=lambda r: r["top1"])  # first maximum: selection uses val top-1 only
    assert best["step"] == chosen["step"] and best["test"]["top1"] == next(
        r["top1"] for r in test if r["step"] == chosen["step"])
    assert run.read_json("final.json")["last"]["step"] == 6  # the headline stays the last iterate
    # The tables report it beside the last iterate, in its own column, never in place of it.
    from dfg.tables import run_row, summarise, summary_latex, summary_markdown

    row = run_row(run)
    assert (row["best_val_step"], row["best_val_top1"]) == (best["step"], pytest.approx(100 * best["test"]["top1"]))
    assert row["top1"] == pytest.approx(100 * test[-1]["top1"])
    summary = summarise([run])
    assert summary[0]["best_val_top1_mean"] == pytest.approx(row["best_val_top1"])
    assert f"| {row['best_val_top1']:.2f} ± — |" in summary_markdown(summary, []) and "Top-1 at best val." in \
        summary_markdown(summary, []) and "best val." in summary_latex(summary, [])


def test_missing_imagenet_weights_say_where_they_go(tmp_path, monkeypatch):
    from dfg.source import SourceError, imagenet_state_dict

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(SourceError) as e:
        imagenet_state_dict(allow_random_init=False)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in str(e.value)
    assert "allow_random_init" in str(e.value)
    assert imagenet_state_dict(allow_random_init=True) is None  # only when the user says so


def test_another_networks_weights_under_the_imagenet_name_are_named_not_a_raw_load_error(tmp_path, monkeypatch):
    from torchvision.models import resnet18

    from dfg.source import SourceError, pretrain_source

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    path.parent.mkdir(parents=True)
    torch.save(resnet18().state_dict(), path)  # readable, but not ResNet-50's
    cfg = make_config("caltech256", {"data_root": str(tmp_path)})
    with pytest.raises(SourceError, match=r"named as ResNet-50's ImageNet weights .* does not fit ResNet-50 .* "
                                          r"Delete it and fetch it again"):
        pretrain_source(cfg, 3, torch.device("cpu"))


def test_a_resumed_run_keeps_the_source_model_it_started_from(tmp_path):
    """The source cache has one entry per thread count (CPU sums depend on it). A run that resumes with other
    threads keeps the entry its checkpoint names; without that entry it says so and uses its own; a damaged
    entry is named and trained again."""
    from dfg.source import pretrain_source, source_key

    def cfg(threads):
        return make_config("demo", {"pretrain_steps": 3, "source_per_class": 20, "data_root": str(tmp_path),
                                    "threads": threads})
    cpu, logged = torch.device("cpu"), []
    e1, _ = pretrain_source(cfg(1), 1, cpu)
    entries = sorted((tmp_path / "sources").glob("*.pt"))
    e2, _ = pretrain_source(cfg(2), 1, cpu, started_from={"threads": 1, "device": "cpu"}, log=logged.append)
    assert sorted((tmp_path / "sources").glob("*.pt")) == entries and not logged  # no second entry trained
    assert all(torch.equal(a, b) for a, b in zip(e1.state_dict().values(), e2.state_dict().values()))
    pretrain_source(cfg(2), 1, cpu, started_from={"threads": 3, "device": "cpu"}, log=logged.append)
    assert len(logged) == 1 and "started from" in logged[0] and "threads=3" in logged[0]
    assert (tmp_path / "sources" / f"{source_key(cfg(2), 1)}.pt").is_file()
    damaged = tmp_path / "sources" / f"{source_key(cfg(1), 1)}.pt"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    logged.clear()
    pretrain_source(cfg(1), 1, cpu, log=logged.append)
    assert len(logged) == 1 and str(damaged) in logged[0] and "training it again" in logged[0]
    assert pretrain_source(cfg(1), 1, cpu, log=logged.append) and len(logged) == 1  # whole again


def test_two_runs_needing_one_source_model_train_it_once(tmp_path, monkeypatch):
    """A sweep's parallel seeds of one preset start together: one trains the cache entry while the other waits on
    its lock, then loads it (the same weights), and a temp file left by a killed writer is cleared."""
    import threading

    from dfg import data as data_module
    from dfg.source import pretrain_source, source_key

    cfg = make_config("demo", {"pretrain_steps": 3, "source_per_class": 20, "data_root": str(tmp_path), "threads": 1})
    (tmp_path / "sources").mkdir()
    stale = tmp_path / "sources" / f".{source_key(cfg, 1)}.pt.tmp99999"
    stale.write_bytes(b"half a checkpoint")
    built, real = [], data_module.build_source_data
    monkeypatch.setattr(data_module, "build_source_data", lambda *a, **k: built.append(1) or real(*a, **k))
    out = [None, None]

    def one(i):
        out[i] = pretrain_source(cfg, 1, torch.device("cpu"))[0].state_dict()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and not stale.exists()
    assert all(torch.equal(a, b) for a, b in zip(out[0].values(), out[1].values()))


def test_preflight_maps_the_imagenet_file_instead_of_reading_it_and_a_damaged_one_is_refused(tmp_path, monkeypatch):
    from dfg.source import SourceError, imagenet_state_dict

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    path.parent.mkdir(parents=True)
    torch.save({"fc.weight": torch.arange(6.0).view(2, 3)}, path)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: loads.append(kw.get("mmap", False)) or real_load(*a, **kw))
    assert torch.equal(imagenet_state_dict(False, check_only=True)["fc.weight"], torch.arange(6.0).view(2, 3))
    assert loads == [True]  # one memory-mapped open: the run's own load is the only full read
    assert torch.equal(imagenet_state_dict(False)["fc.weight"], torch.arange(6.0).view(2, 3)) and loads[-1] is False
    path.write_bytes(path.read_bytes()[:200])  # a truncated download
    with pytest.raises(SourceError, match="cannot be read .* Delete it and fetch it again"):
        imagenet_state_dict(False, check_only=True)


def test_a_checkpoint_from_another_device_type_reseeds_the_noise_generator(data_root):
    """A CUDA generator's state (16 bytes) cannot be set on a CPU generator (5056 bytes): loading warns
    and seeds the stream from the saved bytes, the same way each time; a same-device state is exact."""
    _, method = setup(tiny(data_root), torch.device("cpu"), log=lambda m: None)
    state = method.state_dict()
    exact = torch.rand(4, generator=method.ctx.rng)
    method.load_state_dict(state)
    assert torch.equal(torch.rand(4, generator=method.ctx.rng), exact)
    draws = []
    for offset in (0, 0, 1):
        state["rng"] = torch.arange(16, dtype=torch.uint8) + offset  # the shape of a CUDA generator's state
        with pytest.warns(UserWarning, match="another device type"):
            method.load_state_dict(state)
        draws.append(torch.rand(4, generator=method.ctx.rng))
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


class _OpLog(torch.utils._python_dispatch.TorchDispatchMode):
    """Every aten op with its input shapes, in call order."""

    def __init__(self):
        super().__init__()
        self.ops, self.paused = [], False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused:
            self.ops.append((str(func), tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))))
        return func(*args, **(kwargs or {}))


class _Unlogged:
    """A batch stream whose own ops (shuffling, augmentation) stay out of the log: a graphed step draws
    its batches outside the graph."""

    def __init__(self, stream):
        self.stream, self.log = stream, None

    def next(self):
        self.log.paused = True
        try:
            return self.stream.next()
        finally:
            self.log.paused = False


@pytest.mark.parametrize("method", [*METHODS, "dfg+official"])
def test_steps_with_one_graph_key_run_the_same_ops_without_reading_back(method, data_root):
    """What cuda_graphs relies on (dfg/cudagraphs.py): once every optimiser has its state, `update` runs the
    same op sequence on every step with the same graph_key, and never reads a value back to the host; the
    filter weights (every nW steps) are recomputed in after_update, outside it."""
    from dfg.data import BatchStream
    official = {name: True for name in OFFICIAL_SWITCHES} if method.endswith("+official") else {}
    method = method.removesuffix("+official")  # dfg+official: every official-code switch on
    cfg = tiny(data_root, method=method, steps=24, difa_phase_fraction=0.34, n_w=4, **official)
    _, m = setup(cfg, torch.device("cpu"), log=lambda m: None)
    m.on_start()
    stream = _Unlogged(BatchStream(load_data(cfg).train, cfg.batch_size, seed=0))
    seqs: dict[tuple, list] = {}
    recomputed = []
    if hasattr(m, "recompute_weights"):
        inner = m.recompute_weights
        m.recompute_weights = lambda step: (recomputed.append(step), inner(step))[1]
    for step in range(1, cfg.steps + 1):
        with _OpLog() as log:
            stream.log = log
            out = m.update(step, stream)
        m.after_update(step, out)
        seqs.setdefault(m.graph_key(step), []).append(log.ops)
    for key, runs in seqs.items():
        assert all(not any("_local_scalar_dense" in op or "item" in op for op, _ in ops) for ops in runs), key
        for later in runs[2:]:  # warm-up: the first two of each key (optimiser state appears lazily)
            assert later == runs[1], key
    keys = {k for k, runs in seqs.items() if len(runs) >= 3}
    if method == "difa_cmwgan":
        assert {k[-1] for k in keys} == {1, 2, 3}  # its three phases
    if method == "dfg":
        assert len(keys) == 4, seqs.keys()  # the nC1 / nC2 branches give different keys...
        assert len({len(seqs[k][1]) for k in keys}) == len(keys)  # ...with different op sequences
        assert recomputed == [4, 8, 12, 16, 20, 24]  # after_update, every n_w steps
        assert seqs[(1.0, True, True)][1] != seqs[(1.0, True, False)][1]


def test_cuda_graphs_needs_a_cuda_run_and_is_ignored_on_the_cpu(data_root, tmp_path):
    from dfg.cudagraphs import GraphedSteps
    cfg = tiny(data_root, cuda_graphs=True)
    _, method = setup(cfg, torch.device("cpu"), log=lambda m: None)
    with pytest.raises(ValueError, match="cuda_graphs needs the run on a CUDA device"):
        GraphedSteps(method)
    rows = {}
    for graphs in (True, False):
        run = Run.create(tmp_path, f"g-{graphs}", cfg.to_dict())
        logged = []
        assert train(tiny(data_root, cuda_graphs=graphs), run, log=logged.append)["state"] == "finished"
        assert not any("cuda_graphs" in m for m in logged)
        rows[graphs] = [{k: v for k, v in r.items() if k not in ("time", "steps_per_s")}
                        for r in run.read_metrics()[0] if r["kind"] == "train"]
    assert rows[True] == rows[False] and rows[True]


def test_the_source_cache_is_one_entry_per_thread_count_and_device_type():
    """A CPU's float sums depend on its thread count, so the cached source model does too: runs on one thread
    count share one entry, another count gets its own, and a GPU's entry is independent of CPU threads."""
    from dfg.source import source_key

    one, two = make_config("demo", {"threads": 1}), make_config("demo", {"threads": 2})
    assert source_key(one, 1) != source_key(two, 1)
    assert source_key(one, 1) == source_key(make_config("demo", {"threads": 1, "steps": 5, "rho": 0.1}), 1)
    assert source_key(one, 1, "cuda") == source_key(two, 1, "cuda") != source_key(one, 1, "cpu")
    # on a GPU, TF32 and deterministic kernels change the sums: each their own entry (not on the CPU)
    gpu = {source_key(make_config("demo", {"tf32": t, "deterministic": d}), 1, "cuda")
           for t in (False, True) for d in (False, True)}
    assert len(gpu) == 4 and source_key(make_config("demo", {"threads": 1, "tf32": True}), 1) == source_key(one, 1)
    default = make_config("demo", {"threads": 0})  # torch's own count: the key must not read the live setting,
    before = torch.get_num_threads()                # which another run restored in the app's process may change
    key = source_key(default, 1)
    try:
        torch.set_num_threads(1 if before > 1 else 2)
        assert source_key(default, 1) == key
    finally:
        torch.set_num_threads(before)


def test_source_cache_write_survives_its_folder_being_removed_by_a_probe(tmp_path, monkeypatch):
    """Another process's writability probe (preflight in the app) removes the empty sources/ folder it made;
    if that lands between our mkdir and our write, the finished pretraining is still saved."""
    import shutil

    from dfg import source
    from dfg.source import pretrain_source, source_key

    real, calls = source.save_checkpoint, []

    def probe_removes_folder_first(path, *a, **k):
        calls.append(path)
        if len(calls) == 1:
            shutil.rmtree(path.parent)
        return real(path, *a, **k)
    monkeypatch.setattr(source, "save_checkpoint", probe_removes_folder_first)
    cfg = make_config("demo", {"pretrain_steps": 2, "source_per_class": 20, "data_root": str(tmp_path), "threads": 1})
    pretrain_source(cfg, 1, torch.device("cpu"))
    assert len(calls) == 2 and (tmp_path / "sources" / f"{source_key(cfg, 1)}.pt").is_file()
