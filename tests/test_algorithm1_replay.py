"""The library's iterations against plain replays written from the papers: Algorithm 1 (lines 5-20, Eq. 1-4),
Original's E/C updates under SGD with the learning-rate drop, and DIFA+cMWGAN's phases. The same batches, z, ŷ
and x̂, recorded from the library's steps, go through torch's own layers and optimisers in the paper's order,
and every network must end where the library's did. In float64, so the two agree to rounding (the library's
CPU fast paths are float32-only and step aside)."""
import copy
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from dfg import losses
from dfg.data import BatchStream
from dfg.loop import load_data, setup
from dfg.methods import baselines
from dfg.methods import dfg as dfg_module

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from reference import extractor_then_classifier, plain_copy  # noqa: E402

from test_methods import tiny  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def recorded_steps(cfg, steps, monkeypatch):
    """(the method before the steps as float64 plain copies, W*, the method after, what each step drew, and
    each step's losses)."""
    _, method = setup(cfg, CPU, log=lambda m: None)
    method.on_start()  # W* from W(E_S) (Alg. 1 lines 2-4), as the loop starts a fresh run
    for net in method.nets.values():
        net.double()
    before = {k: plain_copy(net) for k, net in method.nets.items()}
    drawn, inner = [], BatchStream(load_data(cfg).train, cfg.batch_size, seed=0)

    class Stream:  # the library's batches, recorded as the replay's float64 inputs
        def next(self):
            x, y = inner.next()
            drawn[-1]["batches"].append((x.double(), y))
            return drawn[-1]["batches"][-1]

    sample, interpolate = dfg_module.sample_noise, losses.interpolate

    def noise(ctx, n, nz):  # z and ŷ as the library draws them from the run's generator
        z, y = sample(ctx, n, nz)
        drawn[-1]["noise"].append((z.double(), y))
        return drawn[-1]["noise"][-1]

    def mixed(real, fake, generator=None):  # the penalty's x̂ (its ε comes from the same generator)
        drawn[-1]["mixed"].append(interpolate(real, fake, generator))
        return drawn[-1]["mixed"][-1]

    for module in (dfg_module, baselines):
        monkeypatch.setattr(module, "sample_noise", noise)
    monkeypatch.setattr(losses, "interpolate", mixed)
    outs = []
    for step in steps:
        drawn.append({"batches": [], "noise": [], "mixed": []})
        outs.append({k: float(v) for k, v in method.train_step(step, Stream()).items()})
    return before, getattr(method, "w_star", None), method, drawn, outs


def assert_same_nets(method, replayed, start):
    for name, net in replayed.items():  # every network moves: the comparison below is not idle
        assert any(not torch.equal(a, b) for a, b in zip(net.state_dict().values(), start[name].values())), name
    for name, net in replayed.items():
        for (pname, a), b in zip(method.nets[name].state_dict().items(), net.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=f"{name}.{pname}")


def optimisers(nets, cfg) -> dict:
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    return {n: torch.optim.Adam(nets[n].parameters(), lr=lr, betas=betas, foreach=False) for n, lr in
            (("extractor", cfg.lr_extractor), ("classifier", cfg.lr_classifier),
             ("generator", cfg.lr_generator), ("critic", cfg.lr_critic))}


def replay(nets, opt, w_star, drawn, cfg, step):
    """Lines 5-20 written out; returns the losses it computed (the nets are updated in place)."""
    E, C, G, D = nets["extractor"], nets["classifier"], nets["generator"], nets["critic"]
    batches, noise, mixed = list(drawn["batches"]), list(drawn["noise"]), list(drawn["mixed"])
    assert len(batches) == cfg.n_critic + 1 and len(mixed) == cfg.n_critic
    assert len(noise) == cfg.n_critic + 1 + (step % cfg.n_c2 == 0)
    out = {}
    with torch.no_grad():  # lines 6-9: E and G fixed during the critic's updates; every fake made first
        reals = [E(batches[i][0]) for i in range(cfg.n_critic)]
        fakes = [G(*noise[i], w_star) for i in range(cfg.n_critic)]
    for real, fake, x_hat in zip(reals, fakes, mixed):
        # x̂ lies on the segment from the fake to the real row, one ε per row (WGAN-GP's sampling)
        d = (real - fake).flatten(1)
        eps = ((x_hat.detach() - fake).flatten(1) * d).sum(1) / (d * d).sum(1)
        assert ((eps >= 0) & (eps <= 1)).all()
        torch.testing.assert_close(x_hat.detach(), fake + eps[:, None, None, None] * (real - fake),
                                   rtol=0, atol=1e-12)
        x_hat = x_hat.detach().clone().requires_grad_(True)
        grad, = torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)
        gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        loss_d = D(fake).mean() - D(real).mean() + cfg.gp_lambda * gp  # Eq. 1, standard sign
        opt["critic"].zero_grad()
        loss_d.backward()
        opt["critic"].step()
        out.update(L_D=loss_d.item(), GP=gp.item())
    z, y_hat = noise[cfg.n_critic]
    loss_g = -D(G(z, y_hat, w_star)).mean()  # lines 10-12, Eq. 2
    opt["generator"].zero_grad()
    loss_g.backward()
    opt["generator"].step()
    out["L_G"] = loss_g.item()
    x, y = batches[cfg.n_critic]
    if step % cfg.n_c1 == 0:  # lines 13-15: G through C on E(x) ⊕ G(z, ŷ), Eq. 4c
        logits = C(torch.cat([E(x).detach(), G(z, y_hat, w_star)]))
        loss = F.cross_entropy(logits, torch.cat([y, y_hat]))
        opt["generator"].zero_grad()
        loss.backward()
        opt["generator"].step()
        out["L_cC_G"] = loss.item()
    out.update(extractor_then_classifier(E, C, opt["extractor"], opt["classifier"], x, y))  # lines 16-17
    if step % cfg.n_c2 == 0:  # lines 18-20: C on the whole Eq. 4
        z2, y2 = noise[cfg.n_critic + 1]
        with torch.no_grad():
            real, fake = E(x), G(z2, y2, w_star)
        l_rc, l_gc = F.cross_entropy(C(real), y), F.cross_entropy(C(fake), y2)
        l_cc = F.cross_entropy(C(torch.cat([real, fake])), torch.cat([y, y2]))
        loss_c = cfg.alpha * l_rc + cfg.beta * l_gc + cfg.gamma * l_cc
        opt["classifier"].zero_grad()
        loss_c.backward()
        opt["classifier"].step()
        out.update(L_gC=l_gc.item(), L_cC=l_cc.item(), L_C=loss_c.item())
    return out


@pytest.mark.parametrize("steps,n_c1,n_c2", [((1, 2), 1, 1), ((1, 2, 3), 2, 3)])
def test_dfg_iterations_equal_the_paper_written_out(steps, n_c1, n_c2, data_root, monkeypatch):
    """With nC1 = nC2 = 1 every block runs; with nC1=2, nC2=3, step 1 runs neither, step 2 the nC1 block alone
    and step 3 the nC2 block alone. Consecutive steps share the optimisers' state and whatever gradients a
    step leaves behind. α, β, γ differ from each other so that a swapped or mislabelled term of Eq. 4 shows;
    nD=2 so that each critic update has its own batch, fake and x̂."""
    cfg = tiny(data_root, n_critic=2, n_c1=n_c1, n_c2=n_c2, n_w=1000, alpha=0.5, beta=0.3, gamma=0.2,
               transfer_reg="none")
    before, w_star, method, drawn, outs = recorded_steps(cfg, steps, monkeypatch)
    assert w_star.min() == 0 and w_star.max() > 1  # the attention is active: some channels off, some boosted
    start = {n: copy.deepcopy(net.state_dict()) for n, net in before.items()}
    opt = optimisers(before, cfg)
    for step, drew, out in zip(steps, drawn, outs):
        expected = replay(before, opt, w_star, drew, cfg, step)
        assert set(out) - {"W_dist"} == set(expected), step
        for key, value in expected.items():
            assert out[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (step, key)
    assert_same_nets(method, before, start)


@pytest.mark.parametrize("joint", [False, True])
def test_original_under_sgd_with_momentum_and_the_lr_drop_is_plain_sgd(joint, data_root, monkeypatch):
    """Original with ResNet-50's E/C optimiser (SGD, momentum 0.9, lr ÷ 10 after lr_drop_at of the steps):
    E on Eq. 3, then C on Eq. 4a through the updated E (lines 16-17), or with official_joint_ec one backward
    of L_E + L_rC for both. Steps 3 and 4 of 4 run at a tenth of the learning rate."""
    cfg = tiny(data_root, method="original", optimizer_ec="sgd", steps=4, lr_drop_at=0.5, sgd_momentum=0.9,
               lr_extractor=0.05, lr_classifier=0.02, official_joint_ec=joint)
    before, _, method, drawn, outs = recorded_steps(cfg, (1, 2, 3, 4), monkeypatch)
    E, C = before["extractor"], before["classifier"]
    start = {n: copy.deepcopy(net.state_dict()) for n, net in before.items()}
    opt = {n: torch.optim.SGD(before[n].parameters(), lr=1.0, momentum=0.9, foreach=False)
           for n in ("extractor", "classifier")}
    for step, drew, out in zip((1, 2, 3, 4), drawn, outs):
        for n, lr in (("extractor", 0.05), ("classifier", 0.02)):
            opt[n].param_groups[0]["lr"] = lr * (0.1 if step > 2 else 1.0)
        (x, y), = drew["batches"]
        if joint:
            loss_e = F.cross_entropy(C(E(x)), y)
            opt["extractor"].zero_grad(), opt["classifier"].zero_grad()
            (2 * loss_e).backward()
            opt["extractor"].step(), opt["classifier"].step()
            assert out["L_E"] == pytest.approx(loss_e.item(), rel=1e-9)
        else:
            expected = extractor_then_classifier(E, C, opt["extractor"], opt["classifier"], x, y)
            assert out["L_E"] == pytest.approx(expected["L_E"], rel=1e-9)
            assert out["L_rC"] == pytest.approx(expected["L_rC"], rel=1e-9)
    assert [g["lr"] for g in method.opts["extractor"].param_groups] == [pytest.approx(0.005)]
    assert_same_nets(method, before, start)


def test_difa_phases_split_the_budget_and_phase_3_trains_c_s_last_layer_on_real_and_generated(data_root,
                                                                                              monkeypatch):
    """Phases 1-3 take a third of the 9 steps each. Phase 3 (fc level): C's last Linear alone, on Eq. 4c over
    the real features ⊕ G(z, ŷ), each row with its own class; E, C's body, G and D stay as they were."""
    cfg = tiny(data_root, method="difa_cmwgan", steps=9, difa_phase_fraction=1 / 3, transfer_reg="none")
    before, _, method, drawn, outs = recorded_steps(cfg, (7, 8), monkeypatch)
    assert [method.phase(s) for s in range(1, 10)] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    E, C, G = before["extractor"], before["classifier"], before["generator"]
    start = {n: copy.deepcopy(net.state_dict()) for n, net in before.items()}
    opt = torch.optim.Adam(C[-1].parameters(), lr=cfg.lr_classifier, betas=(cfg.adam_beta1, cfg.adam_beta2),
                           foreach=False)
    for drew, out in zip(drawn, outs):
        (x, y), = drew["batches"]
        (z, y_hat), = drew["noise"]
        with torch.no_grad():
            real, fake = C[:-1](E(x)), G(z, y_hat)
        loss = F.cross_entropy(C[-1](torch.cat([real, fake])), torch.cat([y, y_hat]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert out["L_cC"] == pytest.approx(loss.item(), rel=1e-9)
    moved = {"classifier"}
    assert_same_nets(method, {n: before[n] for n in moved}, start)
    for name in set(before) - moved:  # (BN statistics of G may move: a frozen G still normalises in train mode)
        for pname, a in method.nets[name].named_parameters():
            assert torch.equal(a, start[name][pname]), f"{name}.{pname}"
