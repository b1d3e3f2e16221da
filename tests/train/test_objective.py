"""Every training objective provides what the loop calls (the `Objective` protocol)."""

from __future__ import annotations

import inspect

import pytest

from dinoflow.train.distill_objectives import FeatureDistillObjective, HeadDistillObjective
from dinoflow.train.objective import Objective
from dinoflow.train.pretrain_objective import PretrainObjective

METHODS = [n for n, f in vars(Objective).items() if inspect.isfunction(f) and not n.startswith("_")]


def test_the_protocol_names_what_the_loop_calls():
    assert set(METHODS) == {"train_module", "checkpoint_modules", "extra_state", "loss", "after_step", "export"}
    assert "views" in Objective.__annotations__


@pytest.mark.parametrize("cls", [PretrainObjective, HeadDistillObjective, FeatureDistillObjective])
def test_objectives_implement_the_protocol(cls):
    for name in METHODS:
        want = list(inspect.signature(getattr(Objective, name)).parameters)[1:]
        got = list(inspect.signature(getattr(cls, name)).parameters)[1:]
        assert len(got) == len(want), (cls.__name__, name, got, want)
