"""Typed config (issue 24, item 3): every value is checked against its default's type."""
from __future__ import annotations

import pytest
import yaml

from boxdepth.cli import main
from boxdepth.config import ConfigError, load_config, save_config


def test_exponent_without_dot_is_a_float():
    # YAML 1.1 reads `1e-3` as the string '1e-3'; training then failed with a TypeError
    cfg = load_config(None, ["solver.base_lr=1e-3", "solver.warmup_factor=1E-4"])
    assert cfg.solver.base_lr == 0.001 and isinstance(cfg.solver.base_lr, float)
    assert cfg.solver.warmup_factor == 1e-4


def test_yaml_file_values_are_typed_too(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("solver:\n  base_lr: 5e-3\n  max_iter: 2e3\n")
    cfg = load_config(good)
    assert cfg.solver.base_lr == 0.005 and cfg.solver.max_iter == 2000
    assert isinstance(cfg.solver.max_iter, int)
    bad = tmp_path / "bad.yaml"
    bad.write_text("solver:\n  steps: 5\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "solver.steps" in str(e.value) and str(bad) in str(e.value)


@pytest.mark.parametrize("override, key, value, expected", [
    ("solver.base_lr=abc", "solver.base_lr", "'abc'", "a float"),
    ("solver.max_iter=ten", "solver.max_iter", "'ten'", "an integer"),
    ("solver.steps=5", "solver.steps", "5", "a list of integers"),
    ("solver.max_iter=2.5", "solver.max_iter", "2.5", "an integer"),
    ("solver.amp=1", "solver.amp", "1", "true or false"),
    ("input.format=[1]", "input.format", "[1]", "a string"),
    ("solver.base_lr=.nan", "solver.base_lr", "nan", "a float"),
])
def test_bad_value_names_key_value_and_expected_type(override, key, value, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert f"'{key}'" in msg and value in msg and expected in msg


def test_int_where_float_expected_and_null_defaults():
    cfg = load_config(None, ["solver.base_lr=1", "input.pixel_std=[1,1,1]",
                             "model.fcos.num_classes=8", "data.image_root=2024",
                             "data.depth_root=null", "solver.steps=[]"])
    assert cfg.solver.base_lr == 1.0 and isinstance(cfg.solver.base_lr, float)
    assert cfg.input.pixel_std == [1.0, 1.0, 1.0]
    assert cfg.model.fcos.num_classes == 8
    assert cfg.data.image_root == "2024"       # a folder YAML read as a number
    assert cfg.data.depth_root is None and cfg.solver.steps == []
    with pytest.raises(ConfigError, match="model.fcos.num_classes"):
        load_config(None, ["model.fcos.num_classes=eight"])


def test_a_bad_value_is_never_saved(tmp_path):
    cfg = load_config(None)
    cfg.solver.base_lr = "abc"   # set in code, past load_config's checks
    with pytest.raises(ConfigError, match="solver.base_lr"):
        save_config(cfg, tmp_path / "config.yaml")
    assert not list(tmp_path.iterdir())


def test_cli_bad_value_is_one_line_and_writes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "synth_boxinst", "solver.max_iter=ten", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "solver.max_iter" in err and "'ten'" in err
    assert not (run / "config.yaml").exists()


def test_saved_config_loads_back_with_the_same_types(tmp_path):
    cfg = load_config(None, ["solver.base_lr=1e-3", "input.pixel_std=[1,1,1]"])
    save_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["solver"]["base_lr"] == 0.001 and saved["input"]["pixel_std"] == [1.0, 1.0, 1.0]
    assert load_config(tmp_path / "config.yaml") == cfg
