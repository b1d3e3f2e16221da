import pytest

from dinoflow.config import Config, ConfigError, load_config


def test_params_yaml_loads_and_validates():
    cfg = load_config("params.yaml")
    assert isinstance(cfg, Config)
    assert cfg.pretrain.model.patch_size == 7


def test_defaults_follow_the_recipe():
    cfg = Config()
    assert cfg.pretrain.loss.student_temp == 0.1
    assert cfg.pretrain.crops.blur_p == (1.0, 0.1, 0.5)
    assert cfg.pretrain.optim.clip_grad == 3.0
    assert cfg.pretrain.masks.mask_ratio_min_max == (0.1, 0.5)


def test_override_is_parsed_as_yaml_and_applied():
    cfg = load_config("params.yaml", ["pretrain.train.max_steps=3", "pretrain.crops.global_scale=[0.5, 1.0]"])
    assert cfg.pretrain.train.max_steps == 3
    assert cfg.pretrain.crops.global_scale == (0.5, 1.0)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"pretrain\.train\.batchsize: unknown key"):
        load_config("params.yaml", ["pretrain.train.batchsize=3"])


def test_bad_literal_names_allowed_values():
    with pytest.raises(ConfigError) as e:
        load_config("params.yaml", ["pretrain.loss.centering=median"])
    assert "pretrain.loss.centering" in str(e.value)
    assert "softmax" in str(e.value) and "sinkhorn_knopp" in str(e.value)


def test_patch_must_divide_image():
    with pytest.raises(ConfigError, match="not divisible"):
        load_config("params.yaml", ["pretrain.model.img_size=30"])


def test_override_needs_equals():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config("params.yaml", ["pretrain.train.max_steps"])
