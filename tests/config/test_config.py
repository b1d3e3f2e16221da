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


# ---------------------------------------------------------------- ranges, finiteness, secrets


import math  # noqa: E402

from pydantic import ValidationError  # noqa: E402

from dinoflow.config import EvaluateConfig, OptimConfig, dump_config, save_config  # noqa: E402


@pytest.mark.parametrize(
    "override,message",
    [
        ("evaluate.ks=[0,-5]", r"evaluate\.ks\.0: Input should be greater than or equal to 1"),
        ("evaluate.datasets=[]", r"evaluate\.datasets: List should have at least 1 item"),
        ("pretrain.optim.base_lr=.inf", r"pretrain\.optim\.base_lr: Input should be a finite number; got inf"),
        ("pretrain.crops.mean=[0.5, .nan, 0.5]", r"pretrain\.crops\.mean\.1: Input should be a finite number"),
        ("distill.student_ema=1.5", r"distill\.student_ema: Input should be less than or equal to 1"),
        ("pretrain.model.layerscale_init=0", r"pretrain\.model\.layerscale_init: Input should be greater than 0"),
        ("distill.teacher_patch_size=0", r"distill\.teacher_patch_size: Input should be greater than or equal to 1"),
        ("evaluate.seed=-1", r"evaluate\.seed: Input should be greater than or equal to 0"),
        ("seed=4294967296", r"seed: Input should be less than or equal to 4294967295"),
        ("evaluate.logreg_cs=[0]", r"evaluate\.logreg_cs\.0: Input should be greater than 0"),
        ("evaluate.ks=[20,20]", r"evaluate\.ks lists a value twice"),
        ("register.alias=v3", r"register\.alias: 'v3' is reserved by MLflow"),
        ("register.alias=has space", r"register\.alias: String should match pattern"),
        ("tracking.probe_timeout_s=.inf", r"tracking\.probe_timeout_s: Input should be a finite number"),
        ("pretrain.crops.n_global=1", r"pretrain\.crops\.n_global is 1: .* pretraining needs 2"),
        ("distill.crops.n_global=3", r"distill\.crops\.n_global: Input should be less than or equal to 2"),
        (
            "evaluate.datasets=[{name: m, kind: demo_segmentation}]",
            r"evaluate\.datasets lists dense sets only: add a classification set",
        ),
        ("distill.mode=heads", r"distill\.crops\.n_global is 1: mode heads .* needs 2; use mode features"),
    ],
)
def test_bad_values_are_refused_with_key_and_range(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("params.yaml", [override])


def test_assignment_is_validated_too():
    cfg = Config()
    with pytest.raises(ValidationError, match="finite number"):
        cfg.pretrain.optim.base_lr = math.inf
    with pytest.raises(ValidationError, match="carries credentials"):
        cfg.pretrain.data = "s3://key:secret@bucket/x"


def test_configs_built_in_code_refuse_credentials_and_nan():
    with pytest.raises(ValidationError, match="carries credentials"):
        EvaluateConfig(models={"m": "s3://key:secret@bucket/m.pth"})
    with pytest.raises(ValidationError, match="finite number"):
        OptimConfig(min_lr=float("nan"))


def test_dump_redacts_credentials_that_bypassed_validation(tmp_path):
    """model_construct skips validation (code can do that): the dump still hides the secret."""
    cfg = Config()
    cfg.curate.__dict__["sources"] = ["s3://user:hunter2@bucket/pool/", "s3://AKIA:ab/cd@bucket/x"]
    text = dump_config(cfg)
    assert "hunter2" not in text and "ab/cd" not in text
    assert "s3://***@bucket/pool/" in text and "s3://***@bucket/x" in text
    save_config(cfg, tmp_path / "resolved.yaml")
    assert "hunter2" not in (tmp_path / "resolved.yaml").read_text()


def test_dump_then_load_round_trips(tmp_path):
    cfg = load_config(
        "params.yaml",
        ["pretrain.data=s3://bucket/curated/", "tracking.tracking_uri=postgresql://mlflow@db:5432/mlflow"],
    )
    (tmp_path / "resolved.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_empty_params_file_is_refused_but_braces_mean_defaults(tmp_path):
    (tmp_path / "p.yaml").write_text("# all defaults?\n")
    with pytest.raises(ConfigError, match=r"is empty \(no settings\).*write `\{\}`"):
        load_config(tmp_path / "p.yaml")
    (tmp_path / "p.yaml").write_text("{}\n")
    assert load_config(tmp_path / "p.yaml") == Config()


def test_missing_default_params_file_still_means_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("params.yaml") == Config()
    (tmp_path / "params.yaml").symlink_to(tmp_path / "gone.yaml")  # a dangling link is not "no file"
    with pytest.raises(ConfigError, match="not found"):
        load_config("params.yaml")


def test_error_messages_are_bounded_and_list_at_most_20_problems():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["evaluate.ks=[" + ",".join(["-1"] * 5000) + "]"])
    text = str(e.value)
    assert len(text) < 4000 and "… and 4980 more problems" in text


def test_yaml_anchors_within_budget_still_work(tmp_path):
    """Sharing one crops block between pretrain and distill is what anchors are for."""
    (tmp_path / "p.yaml").write_text(
        "pretrain:\n  crops: &crops {global_size: 28, local_size: 14, n_local: 2}\ndistill:\n  crops: *crops\n"
    )
    cfg = load_config(tmp_path / "p.yaml")
    assert cfg.pretrain.crops == cfg.distill.crops and cfg.distill.crops.global_size == 28
