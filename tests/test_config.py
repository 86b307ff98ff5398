"""The paper presets carry Appendix A's values; validation accepts what the paper prints and refuses the rest."""
import pytest

from dfg.config import CHOICES, ConfigError, make_config
from dfg.presets import PRESETS


@pytest.mark.parametrize("preset, lrs, steps, counts", [
    ("svhn", (2e-5, 2e-5, 2e-4, 1e-4), 20000, (2, 10, 5000)),
    ("fmnist", (1e-5, 1e-5, 1e-4, 1e-4), 20000, (2, 10, 5000)),
    ("stl10", (5e-5, 5e-5, 1e-4, 1e-4), 20000, (2, 10, 5000)),
    ("cinic10", (2e-5, 2e-5, 1e-4, 1e-4), 40000, (2, 10, 5000)),
    ("caltech256", (0.01, 0.01, 1e-4, 1e-4), 40000, (1, 5, 2000)),
    ("food101", (0.01, 0.01, 1e-4, 1e-4), 40000, (1, 5, 2000)),
])
def test_paper_presets_carry_appendix_a(preset, lrs, steps, counts):
    cfg = PRESETS[preset]
    assert (cfg.lr_extractor, cfg.lr_classifier, cfg.lr_generator, cfg.lr_critic) == lrs
    assert cfg.steps == steps and (cfg.n_c1, cfg.n_c2, cfg.n_w) == counts
    assert (cfg.rho, cfg.delta, cfg.n_critic, cfg.gp_lambda, cfg.batch_size) == (0.75, 0.95, 5, 10.0, 64)
    assert (cfg.adam_beta1, cfg.adam_beta2) == (0.5, 0.9)
    assert cfg.optimizer_ec == ("sgd" if cfg.backbone == "resnet50" else "adam")
    # the source model is pretrained on the whole source set (EMNIST, CIFAR-10) or is ImageNet's
    assert cfg.source_per_class == 0 or cfg.source == "imagenet"
    assert cfg.transfer_reg == "auto"  # DFG: DELTA's regulariser (§3); baselines their own


@pytest.mark.parametrize("preset, dataset, majority_count, minority_count", [
    ("svhn", "svhn", 5000, 500),          # §4.1: "majority class images is 5000, ... minority ... 500" (10:1)
    ("fmnist", "fmnist", 6000, 150),      # "6000 and ... 150" (40:1)
    ("cinic10", "cinic10", 9000, 900),    # "9000 training images in each class ... 900 from each minor class"
    ("food101", "food101", 750, 150),     # 750 and 5:1 (the text's "250" contradicts its 5:1; Table 2 says 5:1)
    ("stl10", "stl10", None, None),       # "we did not create an imbalanced condition"
    ("caltech256", "caltech256", None, None),
])
def test_paper_presets_carry_the_step_imbalance_of_section_4_1(preset, dataset, majority_count, minority_count):
    from dfg.data import PAPER_IMBALANCE
    from dfg.data.imbalance import target_counts
    from dfg.paper import TABLE2_RATIO

    cfg = PRESETS[preset]
    assert cfg.dataset == dataset
    if majority_count is None:
        assert cfg.imbalance == "none" and PAPER_IMBALANCE[dataset] is None and TABLE2_RATIO[dataset] == "1:1"
        return
    assert cfg.imbalance == "step" and cfg.num_majority == 2  # §4.1: two (and eight) majority classes
    assert PAPER_IMBALANCE[dataset] == dict(n_max=cfg.n_max, ratio=cfg.ratio)
    assert TABLE2_RATIO[dataset] == f"{cfg.ratio:g}:1"
    k = 101 if dataset == "food101" else 10
    counts = target_counts([majority_count] * k, "step", ratio=cfg.ratio, n_max=cfg.n_max, majority=(0, 1))
    assert counts == [majority_count] * 2 + [minority_count] * (k - 2)


def test_the_papers_printed_equation_4_weights_are_accepted():
    cfg = make_config("fmnist", {"alpha": "0.333", "beta": "0.333", "gamma": "0.333"})  # App. A prints these
    assert cfg.alpha == 0.333
    with pytest.raises(ConfigError, match="alpha\\+beta\\+gamma"):
        make_config("fmnist", {"alpha": "0.5"})  # 1.1667: not a rounding of 1


def test_source_per_class_zero_means_all_and_negative_is_refused():
    assert make_config("demo", {"source_per_class": "0"}).source_per_class == 0
    with pytest.raises(ConfigError, match="source_per_class=-1 is invalid"):
        make_config("demo", {"source_per_class": "-1"})


def test_transfer_reg_choices():
    assert make_config("demo").transfer_reg == "auto"
    with pytest.raises(ConfigError, match="choose auto, none, delta or l2sp"):
        make_config("demo", {"transfer_reg": "l1"})


def test_a_config_json_from_before_head_refit_resumes_as_it_started():
    from dfg.config import from_dict
    assert from_dict({}).head_refit == "always"  # those runs always re-fit the source head
    assert from_dict(make_config("demo").to_dict()).head_refit == "auto"


def test_preset_is_chosen_by_name_not_overridden_and_seeds_are_checked():
    with pytest.raises(ConfigError, match="choose the preset with --preset"):
        make_config("demo", {"preset": "svhn"})
    for bad in ("-5", str(2 ** 63)):
        with pytest.raises(ConfigError, match=f"seed={bad} is invalid"):
            make_config("demo", {"seed": bad})


@pytest.mark.parametrize("preset", ["demo", "svhn", "fmnist", "stl10", "cinic10", "caltech256", "food101"])
def test_resnet_presets_start_from_a_random_head_and_only_svhn_keeps_short_classes(preset):
    cfg = make_config(preset)
    # App. A: "we replaced the last layer of the base network with random initialization" (ResNet-50 only)
    assert cfg.start_head == ("random" if cfg.backbone == "resnet50" else "source")
    assert cfg.short_classes == ("all" if preset == "svhn" else "error")
    with pytest.raises(ConfigError, match="start_head='fresh' is invalid: choose source"):
        make_config(preset, {"start_head": "fresh"})


def test_every_field_is_documented_and_presets_fields_prints_the_whole_comment(capsys):
    """`python -m dfg presets --fields` and the Train form's tooltips read each field's comment in Config; a
    comment that continues on the next lines arrives whole, and section headings do not leak into it."""
    from dfg import cli
    from dfg.config import FIELD_TYPES, field_docs

    docs = field_docs()
    assert set(docs) == set(FIELD_TYPES)
    assert docs["short_classes"].startswith("a class with fewer training images") and docs["short_classes"].endswith(
        "and the paper draws every pair as majority)")
    assert docs["delta_layers"].endswith("(DELTA's code has no LeNet/VGG list)")
    assert not any("--" in d for d in docs.values())  # "# -- schedule ---" headings end a comment
    assert cli.main(["presets", "--fields"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "frozen_bn str default='train' BN layers of E/C that do not train" in out
    assert "eval = running statistics, kept. Only ResNet-50 has BN" in out


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_each_choice_field_takes_exactly_its_listed_values(name):
    """CHOICES is the one list of allowed values (validation and the Train page's selects): each listed value is
    accepted, anything else stops with a message naming the field."""
    for value in CHOICES[name]:
        assert getattr(make_config("caltech256", {name: value}), name) == value  # resnet50: delta_layers=stages exists
    with pytest.raises(ConfigError, match=f"^{name}='bogus' is invalid"):
        make_config("caltech256", {name: "bogus"})


@pytest.mark.parametrize("overrides", [{"dataset": "glyphs"}, {"source": "mnist5k"}, {"source": "glyphs+mnist5k"}])
def test_a_source_that_includes_the_target_is_refused_where_the_source_model_is_used(overrides):
    """E_S trained on the target's own pool would have seen every minority image the imbalance drops (the
    offline sets split their pools with fixed seeds): refused for the methods that start from E_S."""
    with pytest.raises(ConfigError, match=r"source='[^']+' is invalid: it includes the target dataset '\w+': .* "
                                          r"would not be imbalanced"):
        make_config("demo", overrides)
    assert make_config("demo", {**overrides, "method": "original"}).method == "original"  # no source model
