"""bench/alg1_speed.py --breakdown: each part's own time (nested parts paused), and every patched
attribute put back afterwards; the timed runs' turn-taking and each side's rate; the CPU-steal share;
bench/app_scale.py end to end on tiny folders."""
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from alg1_speed import ExclusiveTimer, interleaved  # noqa: E402
from flops import Steal  # noqa: E402


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_exclusive_timer_pauses_the_outer_part_while_an_inner_part_runs():
    clock = FakeClock()
    module = types.ModuleType("fake_module")

    def leaf():  # a module-level function, as wgan_gp.critic_loss_and_grads is
        clock.now += 5.0

    module.leaf = leaf

    class Step:
        def inner(self):
            clock.now += 3.0
            module.leaf()

        def outer(self):
            clock.now += 2.0
            self.inner()
            clock.now += 1.0
            self.inner()

    step = Step()
    parts = [(step, "outer", "outer"), (step, "inner", "inner"), (module, "leaf", "leaf")]
    with ExclusiveTimer(clock=clock).patched(parts) as timer:
        step.outer()
        assert "inner" in vars(step)  # patched on the instance while inside the block
    assert dict(timer.seconds) == {"outer": 3.0, "inner": 6.0, "leaf": 10.0}
    assert sum(timer.seconds.values()) == clock.now  # the parts add up to the wall time
    assert "outer" not in vars(step) and "inner" not in vars(step)  # instance attributes removed again
    assert module.leaf is leaf  # the module's function put back


def test_interleaved_sides_take_turns_and_get_their_own_rates():
    clock, calls = FakeClock(), []

    def side(name: str, seconds: float):
        def step(s: int):
            calls.append((name, s))
            clock.now += seconds
        return step

    rates = interleaved([side("ours", 1.0), side("ref", 3.0)], steps=5, chunk=2, clock=clock)
    assert calls == [("ours", 1), ("ours", 2), ("ref", 1), ("ref", 2), ("ours", 3), ("ours", 4),
                     ("ref", 3), ("ref", 4), ("ours", 5), ("ref", 5)]  # every step once per side, in turns
    assert rates == [1.0, 1 / 3]  # steps / that side's own seconds
    calls.clear()
    interleaved([side("ours", 1.0), side("ref", 1.0)], steps=3, chunk=1, clock=clock)
    assert [n for n, _ in calls] == ["ours", "ref"] * 3


def test_steal_share_is_the_steal_columns_part_of_all_cpu_time(monkeypatch):
    readings = iter([(100, 1000), (130, 1200)])
    monkeypatch.setattr(Steal, "read", staticmethod(lambda: next(readings)))
    assert Steal().share() == 30 / 200
    monkeypatch.setattr(Steal, "read", staticmethod(lambda: (0, 0)))  # no /proc/stat: no steal reported
    assert Steal().share() == 0.0


def test_exclusive_timer_restores_attributes_when_the_timed_code_raises():
    clock = FakeClock()

    class Step:
        def run(self):
            clock.now += 1.0
            raise RuntimeError("boom")

    step = Step()
    try:
        with ExclusiveTimer(clock=clock).patched([(step, "run", "run")]) as timer:
            step.run()
    except RuntimeError:
        pass
    assert timer.seconds["run"] == 1.0 and timer.stack == []
    assert "run" not in vars(step)


def test_op_times_groups_by_op_and_shapes_with_each_ops_flops():
    import torch
    from flops import OpTimes

    class Ticking:  # each reading one second later: every op call takes exactly 1 s
        def __init__(self):
            self.now = 0.0

        def __call__(self) -> float:
            self.now += 1.0
            return self.now

    a, b = torch.randn(8, 16), torch.randn(16, 4)
    with OpTimes(clock=Ticking()) as log:
        out = torch.mm(a, b)
        torch.mm(a, b)
        torch.mm(b.t(), a.t())
        torch.relu(a)
    assert torch.equal(out, a @ b)  # results pass through unchanged
    mm = ("mm", ((8, 16), (16, 4)))
    assert log.calls[mm] == 2 and log.seconds[mm] == 2.0
    assert log.flops[mm] == 2 * (2 * 8 * 16 * 4)  # two products of 8x16 by 16x4
    assert log.calls[("mm", ((4, 16), (16, 8)))] == 1
    assert log.flops[("relu", ((8, 16),))] == 0 and log.seconds[("relu", ((8, 16),))] == 1.0


def test_app_scale_times_every_page_on_tiny_folders_and_ends_with_key_values(capsys):
    import app_scale

    app_scale.main(["--rows", "200", "--weights", "5", "--runs", "3", "--repeats", "1"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    values = dict(pair.split("=") for pair in last.split())
    for page in app_scale.PAGES:
        for key in (f"{page}_small_s", f"{page}_large_s", f"{page}_rerun_small_s", f"{page}_rerun_large_s"):
            assert float(values[key]) > 0, key
    assert float(values["full_read_metrics_s"]) > 0 and values["rows"] == "200"
