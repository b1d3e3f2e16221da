import math

import pytest

from dinoflow.config import LossConfig, OptimConfig
from dinoflow.train.schedules import Schedules, cosine_warmup, scaled_lr


def test_cosine_warmup_endpoints_and_midpoint():
    kw = dict(base=1.0, final=0.0, total=110, warmup=10)
    assert cosine_warmup(0, **kw) == 0.0
    assert cosine_warmup(5, **kw) == pytest.approx(0.5)
    assert cosine_warmup(10, **kw) == pytest.approx(1.0)
    assert cosine_warmup(60, **kw) == pytest.approx(0.5)  # half-way through the cosine
    assert cosine_warmup(200, **kw) == 0.0


def test_official_array_layout():
    # the official CosineScheduler: final + 0.5 (base - final)(1 + cos(pi i / n)) over i < n
    base, final, total, warm = 0.004, 1e-6, 50, 7
    n = total - warm
    for i in range(n):
        ref = final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / n))
        assert cosine_warmup(warm + i, base=base, final=final, total=total, warmup=warm) == pytest.approx(
            ref, rel=1e-12
        )


def test_sqrt_lr_scaling():
    assert scaled_lr(0.004, 1024, "sqrt") == pytest.approx(0.004)
    assert scaled_lr(0.004, 256, "sqrt") == pytest.approx(0.002)
    assert scaled_lr(0.004, 256, "linear") == pytest.approx(0.001)


def test_recipe_schedules():
    s = Schedules(
        OptimConfig(warmup_epochs=2, freeze_last_layer_epochs=1),
        LossConfig(warmup_teacher_temp_epochs=3),
        epoch_length=10,
        epochs=10,
        total_batch=1024,
    )
    first, later, last = s.at(0), s.at(15), s.at(99)
    assert first["teacher_temp"] == pytest.approx(0.04)
    assert s.at(15)["teacher_temp"] == pytest.approx(0.04 + 0.03 * 15 / 30)
    assert s.at(30)["teacher_temp"] == pytest.approx(0.07)
    assert first["last_layer_lr"] == 0.0 and s.at(9)["last_layer_lr"] == 0.0
    assert s.at(10)["last_layer_lr"] == s.at(10)["lr"] > 0
    assert first["wd"] == pytest.approx(0.04) and last["wd"] == pytest.approx(0.4, rel=1e-3)
    assert first["momentum"] == pytest.approx(0.992) and last["momentum"] == pytest.approx(1.0, abs=1e-5)
    assert s.at(20)["lr"] == pytest.approx(0.004)  # peak right after warmup at batch 1024
    assert later["lr"] < s.at(20)["lr"]


def test_pure_function_of_step():
    s = Schedules(OptimConfig(), LossConfig(), epoch_length=7, epochs=3, total_batch=64)
    assert [s.at(i) for i in range(21)] == [s.at(i) for i in range(21)]
