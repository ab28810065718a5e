import pytest
import yaml

from boxdepth.config import ConfigError, load_config, save_config


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_have_the_spec_values():
    cfg = load_config()
    assert cfg.model.mask_head.topk_proposals_per_im == 64
    assert cfg.loss.depth_consistency.tau == 0.5
    assert cfg.loss.depth_consistency.pairs == "separate"  # SPEC §2: L_cons a term of its own
    assert cfg.distill.alpha == 0.8 and cfg.distill.beta == 0.2
    assert cfg.input.size_divisibility == 32


def test_base_inheritance_and_overrides(tmp_path):
    base = _write(tmp_path / "base.yaml", {"solver": {"base_lr": 0.02, "max_iter": 100},
                                           "model": {"backbone": {"name": "resnet18"}}})
    child = _write(tmp_path / "child.yaml", {"_base_": "base.yaml", "solver": {"max_iter": 50}})
    cfg = load_config(child, ["solver.steps=[10, 20]", "model.depth_head=true",
                              "data.depth_root=/x/y"])
    assert cfg.solver.base_lr == 0.02          # from the base
    assert cfg.solver.max_iter == 50           # child wins over base
    assert cfg.solver.steps == [10, 20]        # override parsed as YAML
    assert cfg.model.depth_head is True
    assert cfg.data.depth_root == "/x/y"
    assert cfg.solver.momentum == 0.9          # untouched default
    assert base.exists()


def test_unknown_key_in_file_names_key_and_suggestions(tmp_path):
    bad = _write(tmp_path / "bad.yaml", {"solver": {"base_lrr": 0.1}})
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    msg = str(e.value)
    assert "solver.base_lrr" in msg and "solver.base_lr" in msg and str(bad) in msg


def test_unknown_override_names_closest_keys():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["loss.depth_consistency.kapa=1"])
    assert "loss.depth_consistency.kapa" in str(e.value)
    assert "loss.depth_consistency.kappa" in str(e.value)


def test_override_errors():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["solver.base_lr"])
    with pytest.raises(ConfigError, match="section"):
        load_config(None, ["solver=3"])


def test_base_cycle_and_missing_file(tmp_path):
    _write(tmp_path / "a.yaml", {"_base_": "b.yaml"})
    _write(tmp_path / "b.yaml", {"_base_": "a.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["solver.max_iter=7"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize("name", ["synth_boxinst", "coco_r50_1x", "coco_r50_3x"])
def test_packaged_configs_load_and_build(name):
    from boxdepth.models.build import build_model
    cfg = load_config(name, ["model.fcos.num_classes=4", "model.backbone.name=resnet18"]
                      if name.startswith("coco") else ["model.fcos.num_classes=4"])
    model = build_model(cfg)
    assert model.num_classes == 4
    if name == "coco_r50_3x":
        assert cfg.solver.steps == [210000, 250000] and cfg.solver.base_lr == 0.01
